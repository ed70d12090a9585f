"""Numeric command-line options are range-checked when parsed: the option, the value found and the
range allowed are named, and the exit code is 2 before any work starts."""
import pytest

from autoseg.cli import main, number_in

PREDICT = ["predict", "-i", "in", "-o", "out", "-d", "4"]


@pytest.mark.parametrize("args, option, allowed, value", [
    (PREDICT + ["--step_size", "-0.5"], "--step_size", "a number in (0, 1]", "-0.5"),
    (PREDICT + ["--step_size", "0"], "--step_size", "a number in (0, 1]", "0"),
    (PREDICT + ["--step_size", "1.01"], "--step_size", "a number in (0, 1]", "1.01"),
    (PREDICT + ["--step_size", "nan"], "--step_size", "a number in (0, 1]", "nan"),
    (PREDICT + ["--step_size", "half"], "--step_size", "a number in (0, 1]", "half"),
    (["train", "3d_fullres", "0", "-d", "4", "-nw", "-1"], "-nw/--num-workers", "a whole number >= 0", "-1"),
    (["train_all", "-d", "4", "-nw", "2.5"], "-nw/--num-workers", "a whole number >= 0", "2.5"),
    (["train", "3d_fullres", "0", "-d", "4", "-np", "-1"], "-np", "a whole number >= 0", "-1"),
    (PREDICT + ["--num-parts", "0"], "--num-parts", "a whole number >= 1", "0"),
    (PREDICT + ["--part-id", "-1"], "--part-id", "a whole number >= 0", "-1"),
    (["plan_and_preprocess", "-d", "4", "-np", "0"], "-np/--num-processes", "a whole number >= 1", "0"),
    (["convert_msd", "-i", "Task04", "-d", "1000"], "-d/--dataset-id", "a whole number in [0, 999]", "1000"),
    (["evaluate", "-ref", "r", "-pred", "p", "--nsd-tolerance", "-1"], "--nsd-tolerance", "a number > 0", "-1"),
])
def test_out_of_range_numbers_stop_the_parser(args, option, allowed, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"autoseg {args[0]}: error: argument {option}: expected {allowed}, found '{value}'"


@pytest.mark.parametrize("parts, part", [("2", "2"), ("1", "1"), ("3", "7")])
def test_a_part_outside_the_parts_is_refused_before_any_work(parts, part, capsys, tmp_path):
    code = main(["predict", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out"), "-d", "4",
                 "--root", str(tmp_path), "--num-parts", parts, "--part-id", part])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"autoseg predict: error: argument --part-id: expected a whole number in [0, {int(parts) - 1}] "
                    f"(--num-parts {parts}), found '{part}'")
    assert not (tmp_path / "out").exists()


def test_number_in_takes_the_closed_edges_and_refuses_the_open_ones():
    fraction = number_in(float, 0, 1, low_open=True)
    assert fraction("1") == 1.0 and fraction("1e-3") == 0.001
    for text in ("0", "inf", "-inf"):
        with pytest.raises(Exception, match=r"expected a number in \(0, 1\]"):
            fraction(text)
    assert number_in(int, 0)("0") == 0
    assert number_in(float, high=2, high_open=True)("1.5") == 1.5
    with pytest.raises(Exception, match="expected a number < 2, found '2'"):
        number_in(float, high=2, high_open=True)("2")


def test_train_takes_nw_for_workers_and_still_takes_np_with_a_warning(caplog):
    from autoseg.cli import build_parser

    assert build_parser().parse_args(["train", "3d_fullres", "0", "-d", "4", "-nw", "3"]).num_workers == 3
    assert not caplog.records
    assert build_parser().parse_args(["train_all", "-d", "4", "-np", "2"]).num_workers == 2
    assert "-np is deprecated here" in caplog.text and "-nw/--num-workers" in caplog.text
