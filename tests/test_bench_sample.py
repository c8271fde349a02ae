"""The sampling benchmark's code paths, at tiny size on the CPU (the real figures come from the GPU)."""

import torch

from eval.bench_sample import bench, check_accuracy


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

    from eval.bench_levers import main

    out = tmp_path / "levers.json"
    assert main(["--tiny", "--device", "cpu", "--compile", "none", "--iters", "1", "--parts",
                 "mlp_gemm,forward", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    gemm = res["mlp_gemm"]
    assert gemm["addmm_gelu_epilogue"]["rel_l2_vs_fp32_erf"] < 1e-2 and gemm["linear_only"]["ms"] > 0
    assert res["forward"]["plain_cudnn_epilogue"]["max_rel_l2"] < 0.05  # bf16 against fp32
    assert "identity_cudnn_epilogue" in res["forward"] and res["weights"] == "random (tiny smoke test)"
