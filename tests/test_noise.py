"""Noise scale g = eps/(1-m) * (N/B - 1), its approximation and the paper's scaling rules."""

import math

import pytest

from growbatch.checks import check_batch_size, check_dataset_size, check_lr, check_momentum
from growbatch.schedule.noise import (
    batch_size_for_momentum,
    batch_size_for_noise_ratio,
    effective_lr,
    lr_for_batch_size,
    noise_scale,
    noise_scale_approx,
)
from growbatch.schedule.planner import noise_report


# -- formulas against values worked out by hand ----------------------------------------
@pytest.mark.parametrize(
    "lr, batch_size, dataset_size, momentum, expected",
    [
        (0.1, 128, 50_000, 0.9, (0.1 / 0.1) * (50_000 / 128 - 1)),  # 389.625
        (0.1, 100, 1_000, 0.0, 0.1 * 9),
        (0.5, 3200, 50_000, 0.98, 25 * (15.625 - 1)),
        (3.0, 8192, 1_281_167, 0.9, 30 * (1_281_167 / 8192 - 1)),
        (0.1, 1_000, 1_000, 0.0, 0.0),  # full batch: no noise
    ],
)
def test_noise_scale_hand_values(lr, batch_size, dataset_size, momentum, expected):
    assert noise_scale(lr, batch_size, dataset_size, momentum) == pytest.approx(expected, rel=1e-12)


def test_noise_scale_cifar_value_written_out():
    assert noise_scale(0.1, 128, 50_000, momentum=0.9) == pytest.approx(389.625, rel=1e-12)
    assert noise_scale_approx(0.1, 128, 50_000, momentum=0.9) == pytest.approx(390.625, rel=1e-12)


def test_approximation_is_close_only_for_small_batches():
    # g_approx / g = (N/B) / (N/B - 1): 1.0026 at B = 128, 2 at B = N/2
    assert noise_scale_approx(0.1, 128, 50_000) / noise_scale(0.1, 128, 50_000) == pytest.approx(390.625 / 389.625)
    assert noise_scale_approx(0.1, 25_000, 50_000) / noise_scale(0.1, 25_000, 50_000) == pytest.approx(2.0)


@pytest.mark.parametrize("lr, momentum, expected", [(0.1, 0.9, 1.0), (0.5, 0.98, 25.0), (0.2, 0.0, 0.2), (3.0, 0.975, 120.0)])
def test_effective_lr(lr, momentum, expected):
    assert effective_lr(lr, momentum) == pytest.approx(expected, rel=1e-12)


def test_batch_size_for_noise_ratio_exact_and_approximate():
    assert batch_size_for_noise_ratio(128, 50_000, 1 / 5, exact=False) == pytest.approx(640.0)
    # N / (1 + (N/B - 1)/5) = 50000 / 78.925
    exact = batch_size_for_noise_ratio(128, 50_000, 1 / 5)
    assert exact == pytest.approx(50_000 / 78.925, rel=1e-12)
    # oracle: the exact batch divides the exact g by 5
    assert noise_scale(0.1, exact, 50_000) == pytest.approx(noise_scale(0.1, 128, 50_000) / 5, rel=1e-12)


def test_batch_size_for_noise_ratio_near_full_batch_differs_from_approximation():
    # at B = N/2, halving g needs B' = N / (1 + 0.5) = 2N/3, not the approximation's 2B = N
    assert batch_size_for_noise_ratio(25_000, 50_000, 0.5) == pytest.approx(50_000 / 1.5)
    assert batch_size_for_noise_ratio(25_000, 50_000, 0.5, exact=False) == pytest.approx(50_000)


def test_lr_for_batch_size_keeps_noise_scale():
    assert lr_for_batch_size(0.1, 128, 256) == pytest.approx(0.2)  # B ∝ eps
    exact = lr_for_batch_size(0.1, 128, 256, dataset_size=50_000)
    assert exact == pytest.approx(0.1 * 389.625 / 194.3125, rel=1e-12)
    assert noise_scale(exact, 256, 50_000) == pytest.approx(noise_scale(0.1, 128, 50_000), rel=1e-12)


def test_batch_size_for_momentum():
    assert batch_size_for_momentum(640, 0.9, 0.98) == pytest.approx(3200)  # the paper's §5.2 pair
    assert batch_size_for_momentum(128, 0.0, 0.9) == pytest.approx(1280)
    assert batch_size_for_momentum(3200, 0.98, 0.9) == pytest.approx(640)
    # B ∝ 1/(1-m) keeps the approximate g
    assert noise_scale_approx(0.1, 640, 50_000, 0.9) == pytest.approx(noise_scale_approx(0.1, 3200, 50_000, 0.98))


# -- errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: check_lr(0), ValueError, r"lr should be a positive number, but got lr=0"),
        (lambda: check_lr(-0.1), ValueError, r"lr should be a positive number, but got lr=-0.1"),
        (lambda: check_lr(math.nan), ValueError, r"lr should be a finite number, but got lr=nan"),
        (lambda: check_lr("0.1"), TypeError, r"lr should be a number, but got lr='0.1' \(str\)"),
        (lambda: check_lr(True), TypeError, r"lr should be a number, but got lr=True \(bool\)"),
        (lambda: check_momentum(1.0), ValueError, r"momentum should be in \[0, 1\), but got momentum=1"),
        (lambda: check_momentum(-0.1), ValueError, r"momentum should be in \[0, 1\), but got momentum=-0.1"),
        (lambda: check_batch_size(0), ValueError, r"batch_size should be a positive integer value, but got batch_size=0"),
        (lambda: check_batch_size(-8), ValueError, r"but got batch_size=-8"),
        (lambda: check_batch_size(12.5), TypeError, r"batch_size should be a positive integer value, but got batch_size=12.5"),
        (lambda: check_batch_size(60_000, 50_000), ValueError,
         r"batch_size should be at most the data set size 50000, but got batch_size=60000"),
        (lambda: check_batch_size(60_000, 50_000, name="max_batch_size"), ValueError,
         r"max_batch_size should be at most the data set size 50000, but got max_batch_size=60000"),
        (lambda: check_dataset_size(0), ValueError, r"dataset_size should be a positive integer value, but got dataset_size=0"),
        (lambda: noise_scale(0.1, 60_000, 50_000), ValueError, r"batch_size should be in \(0, 50000\], but got batch_size=60000"),
        (lambda: noise_scale(0.1, 0, 50_000), ValueError, r"batch_size should be in \(0, 50000\], but got batch_size=0"),
        (lambda: noise_scale(0.1, 128, 50_000, momentum=1.0), ValueError, r"momentum should be in \[0, 1\)"),
        (lambda: noise_scale(-1.0, 128, 50_000), ValueError, r"lr should be a positive number, but got lr=-1"),
        (lambda: noise_scale_approx(0.1, 0, 50_000), ValueError, r"batch_size should be positive, but got batch_size=0"),
        (lambda: batch_size_for_noise_ratio(128, 50_000, 0), ValueError, r"ratio should be positive, but got ratio=0"),
        (lambda: lr_for_batch_size(0.1, 128, 50_000, dataset_size=50_000), ValueError,
         r"the exact rule needs batch sizes below the data set size 50000"),
        (lambda: lr_for_batch_size(0.1, 0, 128), ValueError, r"batch sizes should be positive, but got batch_size=0"),
        (lambda: batch_size_for_momentum(128, 0.9, 1.0), ValueError,
         r"new_momentum should be in \[0, 1\), but got new_momentum=1"),
    ],
)
def test_errors_name_the_value_and_what_is_valid(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- the report behind `growbatch noise` --------------------------------------------
def test_noise_report_values():
    report = noise_report(0.1, 128, 50_000, momentum=0.9, factor=5)
    assert report.noise_scale == pytest.approx(389.625, rel=1e-12)
    assert report.noise_scale_approx == pytest.approx(390.625, rel=1e-12)
    assert report.effective_lr == pytest.approx(1.0)
    assert report.batch_size_divide_exact == pytest.approx(50_000 / 78.925, rel=1e-12)
    assert report.batch_size_divide_approx == pytest.approx(640.0)


def test_noise_report_equivalent_settings_have_the_same_noise_scale():
    report = noise_report(0.1, 128, 50_000, momentum=0.9)
    settings = {(s.batch_size, s.momentum): s for s in report.equivalents}
    # batch x2, x5, x10 at m = 0.9; m = 0 with B = 12.8 -> 13; m = 0.95 with 256; m = 0.98 with 640
    assert set(settings) == {(128, 0.9), (256, 0.9), (640, 0.9), (1280, 0.9), (13, 0.0), (256, 0.95), (640, 0.98)}
    for s in report.equivalents:
        # recomputed here from (lr, B, m), not taken from the report
        assert noise_scale(s.lr, s.batch_size, 50_000, s.momentum) == pytest.approx(389.625, rel=1e-12)
    assert settings[(256, 0.9)].lr == pytest.approx(0.1 * 389.625 / 194.3125, rel=1e-12)


def test_noise_report_leaves_out_batches_of_the_whole_data_set():
    report = noise_report(0.1, 300, 1_000, momentum=0.0)
    assert all(s.batch_size < 1_000 for s in report.equivalents)
    assert [s.batch_size for s in report.equivalents if s.momentum == 0.0] == [300, 600]  # x5 and x10 left out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.1, batch_size=1000, dataset_size=1000), r"batch_size should be below the data set size 1000"),
        (dict(lr=0.1, batch_size=128, dataset_size=1000, factor=1.0),
         r"factor should be a number greater than 1, but got factor=1"),
        (dict(lr=0.1, batch_size=2000, dataset_size=1000), r"batch_size should be at most the data set size 1000"),
    ],
)
def test_noise_report_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise_report(**kwargs)
