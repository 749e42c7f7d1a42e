"""Environment detection, the peak table and the MFU convention (O2, E5, U1)."""

import json
import sys

import pytest

from harness.core import env as envmod
from harness.models.gpt import GPT, ModelArgs
from tests.conftest import harness_cli


def test_cpu_environment_block_without_nvml():
    env = envmod.detect("cpu", threads=2)
    assert env["device"] == "cpu" and env["peak"] is None
    assert env["threads"]["torch_num_threads"] == 2
    assert env["cpu"]["cores_logical"] >= 1 and env["python"] and env["torch"]
    assert env["nvml"] == "unavailable" or env["cuda"]  # no GPU: NVML reported unavailable, nothing raised
    assert set(env["precision"]) == {"allow_tf32_matmul", "float32_matmul_precision", "cudnn_allow_tf32"}


def test_missing_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="is not here"):
        envmod.resolve_device("cuda:7", {"cuda": None})
    with pytest.raises(ValueError, match="unknown device"):
        envmod.resolve_device("tpu", {"cuda": None})
    assert envmod.resolve_device("auto", {"cuda": None}) == "cpu"


def test_peak_table_matches_longest_name_and_never_guesses():
    assert envmod.peak_for("NVIDIA H100 80GB HBM3")["bf16_flops"] == 989.4e12
    assert envmod.peak_for("NVIDIA H100 PCIe")["bf16_flops"] == 756e12
    assert envmod.peak_for("NVIDIA H200")["bandwidth_bytes_s"] == 4.8e12
    assert "bf16_flops" not in envmod.peak_for("Tesla T4")  # no bf16 tensor cores
    assert envmod.peak_for("Some Future GPU") is None


def test_mfu_convention_of_methodology_u1():
    """GPT-2-small shape, untied head: 8 x 1024 tokens in 31.6 ms on an H100 SXM in bf16 -> 22.4% MFU."""
    model = GPT(ModelArgs.from_name("small"))
    assert model.num_params() == pytest.approx(163.1e6, rel=1e-3)
    assert model.num_params(matmul_only=True) == pytest.approx(123.7e6, rel=1e-3)
    tokens_per_s = 8 * 1024 / 31.6e-3
    achieved = model.flops_per_token(1024) * tokens_per_s
    assert achieved / 1e12 == pytest.approx(221.7, rel=2e-3)
    assert achieved / envmod.peak_for("NVIDIA H100 80GB HBM3")["bf16_flops"] == pytest.approx(0.224, abs=1e-3)


def test_env_command_json_and_text():
    proc = harness_cli("env", "--json", "--device", "cpu")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["device"] == "cpu" and data["peak"] is None
    text = harness_cli("env", "--device", "cpu").stdout
    assert "peak       n/a" in text and "threads" in text
    bad = harness_cli("env", "--device", "cuda:9")
    assert bad.returncode == 2 and "cuda:9" in bad.stderr


class FakeNVML:
    """pynvml with two GPUs, of which CUDA sees only the second (CUDA_VISIBLE_DEVICES=1)."""

    class NVMLError(Exception):
        pass

    NVML_CLOCK_SM = 1
    uuids = ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-1111-1111-1111-111111111111"]

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, handle):
        return self.uuids[handle]

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1980

    def nvmlDeviceGetPowerUsage(self, handle):
        return 700_000  # mW

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 60

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):  # bindings older than 12.535: no ...EventReasons
        return 0x4


def test_nvml_finds_the_cuda_device_by_uuid_and_reads_old_throttle_reasons(monkeypatch):
    from harness.core import energy

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    monkeypatch.setattr(energy, "cuda_uuid", lambda index: "bbbbbbbb-1111-1111-1111-111111111111")
    assert energy.nvml_handle(0) == 1  # CUDA device 0 is NVML device 1
    monkeypatch.setattr(energy, "cuda_uuid", lambda index: None)
    assert energy.nvml_handle(0) == 0  # UUID unknown: by index, as before
    state = energy.clock_state(0)
    assert state["throttle_reasons"] == 0x4 and state["capped"] and state["power_w"] == 700.0
