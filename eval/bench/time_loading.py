"""Where `UniDiffuserT2I.from_pretrained` spends its time; prints JSON (docs/performance.md).

    python -m eval.bench.time_loading --weights WEIGHTS_FOLDER [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    """Times the imports first, in this fresh process; everything after them runs under the CLI runner
    (a missing GPU or weight file is one line, exit 2)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    stages = {}
    t = time.perf_counter()
    cuda = False  # no GPU call before the device is checked

    def lap(name):
        nonlocal t
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        stages[name] = round(now - t, 3)
        t = now

    import torch
    lap("import torch")
    from models import load_autoencoder, load_uvit
    from models.device import pick_device
    from models.errors import run_cli
    from models.paths import find_weights, read_model_configs
    from models.text_encoder import TextEncoder
    lap("import models")
    import transformers  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401
    lap("import transformers CLIPTextModel")

    def load(_argv) -> int:
        nonlocal cuda
        device = pick_device(args.device)
        cuda = device.type == "cuda"
        dtype = torch.bfloat16
        files = {k: find_weights(k, None, args.weights) for k in ("uvit", "autoencoder", "caption_decoder",
                                                                   "clip_text")}
        configs = read_model_configs(args.weights)
        torch.zeros(1, device=device)
        lap("CUDA context")
        TextEncoder.from_pretrained(files["clip_text"], files["caption_decoder"],
                                    caption_decoder_config=configs.get("caption_decoder"), device=device, dtype=dtype)
        lap("text encoder (CLIP-L + encode_prefix)")
        load_autoencoder(files["autoencoder"], configs.get("autoencoder"), device=device, dtype=dtype)
        lap("autoencoder")
        load_uvit(files["uvit"], configs.get("uvit"), device=device, dtype=dtype)
        lap("uvit")
        sizes = {k: sum(f.stat().st_size for f in (v.rglob("*") if v.is_dir() else [v]) if f.is_file()) / 1e9
                 for k, v in files.items()}
        print(json.dumps({"seconds": stages, "file_gb": sizes}))
        return 0

    return run_cli(load)


if __name__ == "__main__":
    sys.exit(main())
