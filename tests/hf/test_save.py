"""gaincell.save never deletes what it did not write: it replaces only an empty folder or a model it saved."""

import pytest

import gaincell
from gaincell import GainCellError


@pytest.fixture
def model(tiny_gpt2):
    return gaincell.convert(tiny_gpt2(), gaincell.preset("linear", window=16, subtile_rows=8))


def test_a_project_folder_is_refused_and_left_whole(model, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "notes.txt").write_text("notes\n")
    expected = "path must be a new or empty folder or a model saved by gaincell.save, got"
    with pytest.raises(GainCellError, match=expected) as raised:
        gaincell.save(model, project)
    assert "holding notes.txt, src" in str(raised.value) and "\n" not in str(raised.value)
    assert (project / "src" / "main.py").read_text() == "print('mine')\n" and (project / "notes.txt").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["project"]  # no temporary left beside it


def test_an_existing_file_stays_a_file(model, tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"mine")
    with pytest.raises(GainCellError, match="weights.bin \\(an existing file\\)"):
        gaincell.save(model, target)
    assert target.read_bytes() == b"mine"


def test_the_current_folder_is_refused_in_one_line(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GainCellError, match="the current folder or one above it"):
        gaincell.save(model, ".")
    with pytest.raises(GainCellError, match="the current folder or one above it"):
        gaincell.save(model, "..")
    assert list(tmp_path.iterdir()) == []


def test_a_saved_model_or_an_empty_folder_is_replaced(model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    gaincell.save(model, empty)
    assert (empty / ".gaincell-model").is_file() and (empty / "config.json").is_file()
    gaincell.save(model, empty)  # its own model: replaced
    legacy = tmp_path / "legacy"  # saved before the marker existed: config.json names a gain-cell config
    gaincell.save(model, legacy)
    (legacy / ".gaincell-model").unlink()
    gaincell.save(model, legacy)
    assert gaincell.load(legacy).config.gaincell == model.config.gaincell


# -- issue 25 item 7: the files a user added to a saved folder --------------------------------------


@pytest.mark.parametrize("through_link", [False, True])
def test_saving_again_keeps_the_files_a_user_added(model, tmp_path, through_link):
    saved = gaincell.save(model, tmp_path / "saved")
    (saved / "notes.txt").write_text("my notes\n")
    (saved / "eval").mkdir()
    (saved / "eval" / "arc.json").write_text("{}\n")
    target = saved
    if through_link:
        target = tmp_path / "link"
        target.symlink_to(saved, target_is_directory=True)
    gaincell.save(model, target)
    assert (saved / "notes.txt").read_text() == "my notes\n" and (saved / "eval" / "arc.json").read_text() == "{}\n"
    assert gaincell.load(saved) is not None and (saved / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["saved"] + (["link"] if through_link else []))


def test_a_folder_whose_config_has_a_gaincell_key_keeps_the_users_other_files(model, tmp_path):
    """A folder from before the manifest (or a user's, with a config naming gaincell) is not replaced whole."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text('{"gaincell": {}}\n')
    (folder / "train.py").write_text("print('mine')\n")
    gaincell.save(model, folder)
    assert (folder / "train.py").read_text() == "print('mine')\n"
    assert (folder / "model.safetensors").is_file()


def test_a_user_file_under_a_name_save_writes_is_refused_and_nothing_replaced(model, tmp_path):
    saved = gaincell.save(model, tmp_path / "saved")
    card = (saved / "README.md").read_text()
    (saved / "README.md").unlink()
    manifest = (saved / ".gaincell-files").read_text()
    (saved / "README.md").write_text("my own card\n")  # not gaincell's any more: the manifest is older than it
    (saved / ".gaincell-files").write_text(manifest.replace('"README.md": "gaincell.save",', ""))
    with pytest.raises(GainCellError, match="README.md was not written by gaincell.save"):
        gaincell.save(model, saved)
    assert (saved / "README.md").read_text() == "my own card\n" and card
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved"]
