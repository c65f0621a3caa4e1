"""Issue 25, sweeps: results keyed by the model's content, one sweep per output folder, a private Dask cluster."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import pytest
import torch
from sweep_files import spec_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

import gaincell
from gaincell.errors import GainCellError
from gaincell.lock import folder_lock
from gaincell.sweep.run import run_sweep, spec_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def small(files, model, out, **changes) -> dict:
    data = {"model": str(model), "output_dir": str(out), "max_tokens": 200, "seeds": [0], "grid": {"window": [16, 32]}}
    return spec_dict(files, **{**data, **changes})


@pytest.fixture(scope="module")
def other_model(files, tmp_path_factory):
    """The sweep model with other weights (the same shape and tokenizer)."""
    model = AutoModelForCausalLM.from_pretrained(files / "model")
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("other") / "model"
    gaincell.save(model, folder, AutoTokenizer.from_pretrained(files / "model"))
    return folder


def replace(folder, source) -> None:
    """What a user does between two runs: a new model at the same path."""
    shutil.rmtree(folder)
    shutil.copytree(source, folder)


def perplexities(out) -> list:
    return [row["ppl_mean"] for row in json.loads((out / "results.json").read_text())["rows"]]


def test_a_model_replaced_before_a_resume_is_measured_again_never_mixed(files, other_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(files / "model", model)
    run_sweep(spec_from_dict(small(files, model, tmp_path / "out")), progress=False)
    first = perplexities(tmp_path / "out")
    replace(model, other_model)
    run_sweep(spec_from_dict(small(files, model, tmp_path / "out")), progress=False)  # the same output: a resume
    run_sweep(spec_from_dict(small(files, other_model, tmp_path / "fresh")), progress=False)
    assert perplexities(tmp_path / "out") == perplexities(tmp_path / "fresh") != first
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6  # the first model's three lines are kept, not used


def test_a_second_sweep_on_an_output_in_use_is_refused(files, tmp_path):
    out = tmp_path / "out"
    run_sweep(spec_from_dict(small(files, files / "model", out)), progress=False)
    before = (out / "results.jsonl").read_bytes()
    with folder_lock(out, "output_dir", "gaincell sweep"):  # another sweep running there
        with pytest.raises(GainCellError, match=r"output_dir: .*out is in use by another gaincell sweep \(process \d+\)"):
            run_sweep(spec_from_dict(small(files, files / "model", out)), progress=False)
    assert (out / "results.jsonl").read_bytes() == before


distributed = pytest.importorskip("distributed")


def test_a_dask_worker_reads_a_replaced_model_again(files, other_model, tmp_path):
    """Two sweeps on one running scheduler, the model folder replaced between them: the second scores the new model."""
    model = tmp_path / "model"
    shutil.copytree(files / "model", model)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        run_sweep(spec_from_dict(small(files, model, tmp_path / "a")), engine="dask", scheduler=address, progress=False)
        replace(model, other_model)
        run_sweep(spec_from_dict(small(files, model, tmp_path / "b")), engine="dask", scheduler=address, progress=False)
    run_sweep(spec_from_dict(small(files, other_model, tmp_path / "local")), progress=False)
    assert perplexities(tmp_path / "b") == perplexities(tmp_path / "local") != perplexities(tmp_path / "a")


def test_the_local_dask_cluster_is_private(tmp_path):
    """Loopback, TLS with this run's certificate, no dashboard: a plain Client cannot connect."""
    from gaincell.sweep.dask_engine import dask_client

    with dask_client(1, None) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert client.run(lambda: 1)  # the sweep's own client, holding the certificate, works
        port = client.scheduler_info()["services"]["dashboard"]  # the HTTP server: a random port, health only
        assert port != 8787
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5)
        for plain in (address, address.replace("tls://", "tcp://")):
            with pytest.raises((OSError, TimeoutError, TypeError, ValueError)):
                distributed.Client(plain, timeout="3s")


def test_adaptation_checkpoints_of_another_model_are_not_resumed(tmp_path):
    """A point killed mid-adaptation, then the model replaced: its checkpoints (the old model's) are removed."""
    from gaincell.sweep.run import stale_adaptations

    point = tmp_path / "adapt" / "point-0-seed-0"
    point.mkdir(parents=True)
    stale_adaptations(tmp_path, "aaaa")  # from before the digest was recorded: unknown, removed
    assert not point.exists()
    point.mkdir()
    stale_adaptations(tmp_path, "aaaa")  # the same model: kept
    assert point.is_dir()
    (tmp_path / "adapt" / "notes.txt").write_text("mine\n")
    stale_adaptations(tmp_path, "bbbb")  # another model
    assert not point.exists() and (tmp_path / "adapt" / ".model-digest").read_text() == "bbbb\n"
    assert (tmp_path / "adapt" / "notes.txt").read_text() == "mine\n"
