"""The progress line's throughput: tokens/s, TFLOP/s per device and MFU against a controlled clock."""

from __future__ import annotations

import pytest

from sora_jax.training import metrics_log
from sora_jax.training.metrics_log import Progress

METRICS = {"loss": 1.5, "token_accuracy": 0.25, "learning_rate": 1e-3}


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(metrics_log.time, "perf_counter", lambda: now[0])
    return now


def test_rates_from_flops_and_a_known_peak(clock):
    progress = Progress(100, 0, flops_per_step=197e12, num_devices=4, device_kind="TPU v5 lite")
    clock[0] += 10.0  # 10 steps in 10 s: 1 s per step
    text, rates = progress.line(10, METRICS, tokens=50_000)
    assert rates["tokens_per_sec"] == pytest.approx(5_000)
    assert rates["tflops_per_device"] == pytest.approx(197 / 4)
    assert rates["mfu"] == pytest.approx(0.25)  # 49.25 of 197 TFLOP/s per chip
    assert "token_accuracy 0.250" in text and "MFU 25.0%" in text and "49.2 TFLOP/s/device" in text
    assert "acc " not in text


def test_unknown_device_kind_has_no_mfu(clock):
    progress = Progress(100, 0, flops_per_step=13.24e9, num_devices=1, device_kind="cpu")
    clock[0] += 2.0
    text, rates = progress.line(4, METRICS, tokens=10_240)
    assert rates["tflops_per_device"] == pytest.approx(13.24e9 * 2 / 1e12)
    assert "mfu" not in rates and "MFU" not in text


def test_without_flops_only_tokens_per_sec(clock):
    progress = Progress(100, 0)
    clock[0] += 4.0
    _, rates = progress.line(2, METRICS, tokens=8_000)
    assert rates == {"tokens_per_sec": pytest.approx(2_000)}
