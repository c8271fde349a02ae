"""The sampling benchmark's code paths, at tiny size on the CPU (the real figures come from the GPU)."""

import torch

from eval.bench.sample import bench, check_accuracy


def test_fast_and_reference_paths_run_and_report():
    cpu = torch.device("cpu")
    for path in ("reference", "fast"):
        res = bench("sample_prompt", path, identity=path == "fast", steps=2, cfg=7.0, compile_mode=None, repeats=1,
                    device=cpu, tiny=True)
        assert res["workload"] == "sample_prompt" and res["n_images"] == 3 and res["s_per_prompt"] > 0
        assert res["max_reserved_gb"] is None  # no CUDA memory figure on the CPU


def test_accuracy_check_compares_fast_with_fp32():
    res = check_accuracy(None, torch.device("cpu"), tiny=True)
    assert set(res["rel_l2"]) == {"img", "clip_img", "text"}
    assert 0 < res["max_rel_l2"] < 0.05  # bf16 rounding: small but not zero


def test_lever_probe_runs_and_writes_its_json(tmp_path):
    import json

    from eval.bench.levers import main

    out = tmp_path / "levers.json"
    assert main(["--tiny", "--device", "cpu", "--compile", "none", "--iters", "1", "--parts",
                 "mlp_gemm,forward", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    gemm = res["mlp_gemm"]
    assert gemm["addmm_gelu_epilogue"]["rel_l2_vs_fp32_erf"] < 1e-2 and gemm["linear_only"]["ms"] > 0
    assert res["forward"]["plain_cudnn_epilogue"]["max_rel_l2"] < 0.05  # bf16 against fp32
    assert "identity_cudnn_epilogue" in res["forward"] and res["weights"] == "random (tiny smoke test)"


def test_fp8_probe_rounds_like_the_kernels_and_restores_the_model(tmp_path):
    import json

    from eval.bench.probe_fp8 import main, round_bf16, round_fp8_rowwise, rounded_gemms
    from models.uvit import UViT, UViTConfig

    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    rel = lambda y: float((y - x).norm() / x.norm())  # noqa: E731
    assert rel(round_bf16(x)) < 3e-3 < 1e-2 < rel(round_fp8_rowwise(x)) < 5e-2  # 8 vs 3 mantissa bits
    row = x[3:4] * 1e4  # one scale per row: a large row does not crush the others
    assert torch.allclose(round_fp8_rowwise(torch.cat([x, row]))[:3], round_fp8_rowwise(x)[:3])

    torch.manual_seed(0)
    net = UViT(UViTConfig.tiny()).eval()
    blk = net.in_blocks[0].mlp.fc1
    h = torch.randn(2, 5, blk.in_features)
    before = blk(h)
    with rounded_gemms(net, {"fc1": "fp8_rowwise"}) as n:
        assert n == len(net.in_blocks) + 1 + len(net.out_blocks)
        assert not torch.equal(blk(h), before)
    assert torch.equal(blk(h), before)  # the class forward is back

    out = tmp_path / "fp8.json"
    assert main(["--tiny", "--parts", "error", "--out", str(out)]) == 0
    rows = {json.dumps(r["plan"], sort_keys=True): r for r in json.loads(out.read_text())["error"]}
    bf16 = rows[json.dumps(dict.fromkeys(("fc1", "fc2", "proj", "qkv", "skip_linear"), "bf16"), sort_keys=True)]
    fp8 = rows[json.dumps(dict.fromkeys(("fc1", "fc2", "proj", "qkv", "skip_linear"), "fp8_rowwise"), sort_keys=True)]
    assert bf16["within_bound"] and 5 * bf16["max_rel_l2"] < fp8["max_rel_l2"]
