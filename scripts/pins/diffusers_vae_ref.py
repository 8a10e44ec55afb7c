"""Reference models and values for aezoo-diffusers (`vae-kl`, `vae-tiny`), from diffusers.

Builds small `AutoencoderKL` and `AutoencoderTiny` models with diffusers
(random initial weights, torch.manual_seed), writes each with
`save_pretrained` (config.json + diffusion_pytorch_model.safetensors), and
beside it `expected.safetensors`: an input image `x` in [0, 1], the
posterior mean and log-variance (`mean`, `logvar`, after quant_conv), the
decoder's raw output for the mean (`decoded`, diffusers' [-1, 1] space), and
for the KL model a tiled encode and decode (`tiled_mean`, `tiled_decoded`,
`enable_tiling()` with small tiles). The same KL weights are also written
under the legacy attention names (`query`/`key`/`value`/`proj_attn`) and as
an original LDM single-file checkpoint (`first_stage_model.` prefix, 1×1
conv attention), each checked here to map back to diffusers' keys through
diffusers' own `convert_ldm_vae_checkpoint`. `counts.json` holds the
parameter counts of diffusers' SD-sized AutoencoderKL and default
AutoencoderTiny.

    python3 scripts/pins/diffusers_vae_ref.py crates/aezoo-diffusers/tests/fixtures
    (torch and diffusers from PyPI; float32, CPU)
"""
import json
import os
import sys

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

torch.set_grad_enabled(False)


def save_expected(path, tensors):
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, path)


def kl_small(out):
    torch.manual_seed(0)
    cfg = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.5,
        shift_factor=0.1,
    )
    vae = AutoencoderKL(**cfg).eval()
    # Non-trivial norms and biases (diffusers initialises them to 1 and 0).
    for name, p in vae.named_parameters():
        if "norm" in name or name.endswith("bias"):
            p.add_(0.1 * torch.randn_like(p))
    vae.save_pretrained(out, safe_serialization=True)
    x = torch.rand(1, 3, 24, 40)
    h = vae.encode(2 * x - 1).latent_dist
    dec = vae.decode(h.mean).sample
    # Tiled: 16-pixel tiles (2×2 latent after two downsamplings of 2).
    big = torch.rand(1, 3, 40, 56)
    vae.enable_tiling()
    vae.tile_sample_min_size = 16
    vae.tile_latent_min_size = 4
    th = vae.encode(2 * big - 1).latent_dist
    tdec = vae.decode(th.mean).sample
    vae.disable_tiling()
    save_expected(
        os.path.join(out, "expected.safetensors"),
        {
            "x": x,
            "mean": h.mean,
            "logvar": h.logvar,
            "decoded": dec,
            "big": big,
            "tiled_mean": th.mean,
            "tiled_decoded": tdec,
        },
    )
    return vae


def legacy_names(sd):
    """diffusers' state dict under the legacy attention names."""
    out = {}
    for k, v in sd.items():
        k = (
            k.replace(".to_q.", ".query.")
            .replace(".to_k.", ".key.")
            .replace(".to_v.", ".value.")
            .replace(".to_out.0.", ".proj_attn.")
        )
        out[k] = v
    return out


def ldm_names(sd, levels):
    """diffusers' state dict as an original LDM checkpoint."""
    out = {}
    for k, v in sd.items():
        n = k
        for i in range(levels):
            n = n.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            n = n.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            j = levels - 1 - i
            n = n.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{j}.block.")
            n = n.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{j}.upsample.")
        for part in ("encoder", "decoder"):
            n = n.replace(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.")
            n = n.replace(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")
            n = n.replace(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")
            n = n.replace(f"{part}.conv_norm_out.", f"{part}.norm_out.")
        n = n.replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in n:
            n = (
                n.replace("group_norm.", "norm.")
                .replace("to_q.", "q.")
                .replace("to_k.", "k.")
                .replace("to_v.", "v.")
                .replace("to_out.0.", "proj_out.")
            )
            if v.dim() == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + n] = v
    return out


def tiny_small(out):
    torch.manual_seed(1)
    cfg = dict(
        encoder_block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        num_encoder_blocks=(1, 2, 1),
        num_decoder_blocks=(1, 2, 1),
        latent_channels=4,
    )
    vae = AutoencoderTiny(**cfg).eval()
    for name, p in vae.named_parameters():
        if name.endswith("bias"):
            p.add_(0.1 * torch.randn_like(p))
    vae.save_pretrained(out, safe_serialization=True)
    x = torch.rand(1, 3, 24, 40)
    z = vae.encode(2 * x - 1).latents
    dec = vae.decode(z).sample
    save_expected(os.path.join(out, "expected.safetensors"), {"x": x, "mean": z, "decoded": dec})


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "crates/aezoo-diffusers/tests/fixtures"
    kl_dir = os.path.join(root, "kl-small")
    vae = kl_small(kl_dir)
    sd = {k: v.contiguous() for k, v in vae.state_dict().items()}
    levels = len(vae.config.block_out_channels)
    for name, dict_ in (("kl-small-legacy", legacy_names(sd)), ("kl-small-ldm", ldm_names(sd, levels))):
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        save_file(dict_, os.path.join(d, "model.safetensors"))
    # The LDM file maps back to diffusers' keys and values through diffusers' converter.
    back = convert_ldm_vae_checkpoint(ldm_names(sd, levels), dict(vae.config))
    assert set(back) == set(sd), set(back) ^ set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    tiny_small(os.path.join(root, "tiny-small"))
    sd_vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        sample_size=512,
    )
    counts = {
        "sd_autoencoder_kl": sum(p.numel() for p in sd_vae.parameters()),
        "taesd": sum(p.numel() for p in AutoencoderTiny().parameters()),
    }
    with open(os.path.join(root, "counts.json"), "w") as f:
        json.dump(counts, f, indent=2)
        f.write("\n")
    print(counts)


if __name__ == "__main__":
    main()
