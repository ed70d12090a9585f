"""Expected failures end in one message and exit code 2; anything else keeps its traceback."""
import pytest

from autoseg import cli
from autoseg.errors import UnknownNameError, UserFacingError, output_folder


def test_the_cli_device_profiles_are_the_planners():
    from autoseg.planners.experiment import PROFILES

    assert sorted(cli.DEVICE_PROFILES) == PROFILES.names()


def test_an_unknown_device_profile_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["plan_and_preprocess", "-d", "1", "--root", str(tmp_path), "--device-profile", "gpu-3gb"])
    assert stop.value.code == 2 and "invalid choice: 'gpu-3gb'" in capsys.readouterr().err


def test_unknown_names_are_user_errors_and_still_key_errors():
    from autoseg.training.loss import LOSSES

    with pytest.raises(UnknownNameError, match="^unknown loss 'dic'; did you mean 'dice'") as caught:
        LOSSES.get("dic")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, UserFacingError)


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "out.nii.gz"
    blocker.write_bytes(b"x")
    with pytest.raises(UserFacingError, match="is a file; expected a folder"):
        output_folder(blocker)
    assert blocker.read_bytes() == b"x" and output_folder(tmp_path / "new" / "deeper").is_dir()


def test_a_file_not_found_that_no_check_raised_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(root):
        raise FileNotFoundError("an internal file went missing")

    monkeypatch.setattr("autoseg.paths.Workspace.resolve", broken)
    with pytest.raises(FileNotFoundError, match="an internal file went missing"):
        cli.main(["find_best_config", "-d", "1", "--root", str(tmp_path)])


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut off", b"not a checkpoint at all"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, content):
    from autoseg.training.checkpoint import load_checkpoint

    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(content)
    with pytest.raises(UserFacingError, match=r"checkpoint .*checkpoint_latest.pth cannot be read .*--continue"):
        load_checkpoint(path)


def test_an_unplanned_configuration_says_what_was_planned():
    from autoseg.plans import PLANS_SCHEMA_VERSION, Plans

    plans = Plans(PLANS_SCHEMA_VERSION, "Dataset001_X", ("MRI",), {"background": 0, "a": 1}, ".nii.gz", (1.0,) * 3,
                  (8, 8, 8), (), {})
    with pytest.raises(UnknownNameError, match=r"'3d_lowres' is not in the plans of Dataset001_X; planned: \. .*"
                                               r"--force-lowres"):
        plans.configuration("3d_lowres")
