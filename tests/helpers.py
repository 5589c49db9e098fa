"""Helpers shared by the tests (imported as `from helpers import ...`; pytest puts tests/ on the path). Fixtures
live in conftest.py."""
import torch

from indis.discretization import DiscretizationParam
from indis.metrics.distances import TRUNK_FILES, _build_features
from indis.predictor import Predictor

ALL_PROCESSES = ["edm", "flow", "vp_linear", "vp_cosine"]
ALL_SOLVERS = ["euler", "ipndm", "dpmpp_2m", "unipc"]


def random_schedule(T, t0, b, n, dtype, seed=0):
    """Per-sample random strictly decreasing times between t0 and T (in log-time when T > 2, e.g. EDM), with small
    scales gamma and negative shifts dtau: (timesteps [b, n+1], gamma [b, n], dtau [b, n])."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.rand(b, n - 1, generator=g, dtype=torch.float64), dim=1, descending=True).values
    frac = torch.cat([torch.ones(b, 1, dtype=torch.float64), 0.05 + 0.9 * cuts, torch.zeros(b, 1, dtype=torch.float64)], 1)
    if T > 2:
        ts = torch.exp(torch.log(torch.tensor(t0)) + frac * (torch.log(torch.tensor(T)) - torch.log(torch.tensor(t0))))
    else:
        ts = t0 + frac * (T - t0)
    gamma = 1 + 0.05 * torch.randn(b, n, generator=g, dtype=torch.float64)
    dtau = -0.02 * (ts[:, :-1] - ts[:, 1:]) * torch.rand(b, n, generator=g, dtype=torch.float64)
    return ts.to(dtype), gamma.to(dtype), dtau.to(dtype)


def small_edm(model_type="SongUNet", label_dim=0, img_channels=3, seed=0):
    """An EDM preset architecture at small width and 8x8 resolution (the 55M/296M presets are too slow for CI), with
    EDM's zero-initialised output layers given weights so that the network part F(x) matters."""
    from indis.backbones.edm import EDMBackbone

    torch.manual_seed(seed)
    kw = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    bb = EDMBackbone.from_kwargs(img_resolution=8, img_channels=img_channels, label_dim=label_dim, model_type=model_type,
                                 **kw).eval()
    with torch.no_grad():
        for p in bb.parameters():
            if (p == 0).all():
                p.normal_(0, 0.3)
    bb.refresh_id()
    return bb


# tiny randomly initialised diffusers models (nothing is downloaded); `diffusers` is the module (conftest fixture)
# ------------------------------------------------------------------------------------------------
def tiny_unet(diffusers, channels=2, res=8, seed=0, **kw):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=res, in_channels=channels, out_channels=channels, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw).eval()


def tiny_vae(diffusers, latent_channels=4, seed=3, **kw):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                   latent_channels=latent_channels, norm_num_groups=4, sample_size=16, **kw).eval()


def tiny_sd3(diffusers, seed=0, qk_norm=None):
    torch.manual_seed(seed)
    return diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                           caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
                                           pos_embed_max_size=8, qk_norm=qk_norm).eval()


def tiny_unet_cond(diffusers, sdxl=False, seed=0):
    torch.manual_seed(seed)
    kw = dict(addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 + 6 * 8) \
        if sdxl else {}
    return diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                          norm_num_groups=4, attention_head_dim=2, **kw).eval()


def tiny_flux(diffusers, guidance_embeds=True, seed=0):
    torch.manual_seed(seed)
    return diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                            pooled_projection_dim=8, guidance_embeds=guidance_embeds,
                                            axes_dims_rope=(2, 2, 4)).eval()


SD_SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def tiny_ltx(diffusers, seed=0):
    torch.manual_seed(seed)
    return diffusers.LTXVideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                                num_attention_heads=2,
                                                attention_head_dim=8, cross_attention_dim=16, num_layers=1,
                                                caption_channels=16).eval()


LTX_SCHED = dict(use_dynamic_shifting=True, base_image_seq_len=1024, max_image_seq_len=4096, base_shift=0.95,
                 max_shift=2.05)  # LTX-Video's scheduler_config


# LPIPS
# ------------------------------------------------------------------------------------------------
def trunk_file(folder, net, seed=0):
    """A random LPIPS trunk file laid out as torchvision's (features.* and a classifier), saved in folder."""
    torch.manual_seed(seed)
    feats = _build_features(net)
    sd = {f"features.{k}": v for k, v in feats.state_dict().items()}
    sd["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / TRUNK_FILES[net])
    return folder / TRUNK_FILES[net]


def random_head_predictor(bb, nfe=4, warp="logsnr", seed=0, **kw):
    """A small predictor for bb with random head weights (seeded): every sample gets its own timesteps, shifts and
    scales. kw: DiscretizationParam options (b_dtau, b_gamma, ...)."""
    model = Predictor(DiscretizationParam(bb.process, nfe, warp=warp, **kw), bb.data_shape, bb.cond_spec, hidden=16,
                      conv_width=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return model.eval()
