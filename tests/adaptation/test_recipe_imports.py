"""A recipe or a sweep spec is read and checked without torch: a typo fails in a second, not after the model stack loads."""

import subprocess
import sys

import pytest


def loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running ``code``."""
    report = "import sys; print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


CHECK_A_RECIPE = (
    "from gaincell.adaptation.recipe import recipe_from_dict\n"
    "recipe = recipe_from_dict({'data': {'text': 'x.txt'}, 'stages': ['initialised', 'transfer', 'distill']})\n"
    "assert recipe.hardware_config().window == 1024"
)
CODE = [
    pytest.param("import gaincell.adaptation.settings", id="settings"),
    pytest.param("import gaincell.adaptation.recipe", id="recipe"),
    pytest.param("import gaincell.sweep.spec", id="sweep.spec"),
    pytest.param(CHECK_A_RECIPE, id="recipe_from_dict"),
]


@pytest.mark.parametrize("code", CODE)
def test_reading_recipes_and_sweep_specs_imports_neither_torch_nor_transformers(code):
    assert loaded_after(code) & {"torch", "transformers"} == set()


def test_a_path_under_gaincell_data_is_the_shared_folder(tmp_path, monkeypatch):
    from gaincell.adaptation.recipe import recipe_from_dict
    from gaincell.errors import GainCellError

    monkeypatch.setenv("GAINCELL_DATA", str(tmp_path))
    recipe = recipe_from_dict({"model": "$GAINCELL_DATA/models/m", "data": {"text": "$GAINCELL_DATA/a.txt"}})
    assert recipe.model == str(tmp_path / "models" / "m") and recipe.data.text == str(tmp_path / "a.txt")
    assert recipe_from_dict({"data": {"text": "plain/a.txt"}}).data.text == "plain/a.txt"
    monkeypatch.setenv("GAINCELL_DATA", str(tmp_path / "missing"))
    with pytest.raises(GainCellError, match=r"^data.text needs the shared data folder .*set GAINCELL_DATA"):
        recipe_from_dict({"data": {"text": "$GAINCELL_DATA/a.txt"}})
