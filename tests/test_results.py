"""Every result file has one schema (esvae.results): each is written by its writer and read back by
the one reader; a hand-edited file is refused naming its path and the wrong field; the metric
names of the CLI, the file, the report and MLflow come from one registry."""

import json

import pytest

from esvae.cli import main
from esvae.evaluate import METRICS as CLI_METRICS
from esvae.results import METRICS, SCHEMAS, ResultFileError, read_result, write_result
from esvae_pipeline import grid


@pytest.fixture(scope="module")
def written(short_run, fad_autoencoder, data_root, tmp_path_factory):
    """One file of every kind, each made by the code that writes it in a real run."""
    from esvae.evaluate import evaluate_checkpoint
    from esvae.probes import run_probes

    out = tmp_path_factory.mktemp("written")
    run = short_run.parent
    evaluate_checkpoint(
        short_run,
        out / "evaluate",
        metrics=["mse", "params", "spikes"],
        test_subset=64,
        data_root=data_root,
        device="cpu",
    )
    run_probes(
        short_run, out / "probe", train_subset=64, test_subset=32, batch_size=32, data_root=data_root, device="cpu"
    )
    assert (
        main(["prepare-data", "--dataset", "fashion", "--out", str(out / "fashion.json"), "--data-root", data_root])
        == 0
    )
    write_result(out / "preset.json", "preset", grid.resolve_config({"preset": "smoke"}))
    return {
        "train": run / "metrics.json",
        "config": run / "config.json",
        "evaluate": out / "evaluate" / "metrics.json",
        "probe": out / "probe" / "probes.json",
        "fad": fad_autoencoder / "metrics.json",
        "data": out / "fashion.json",
        "preset": out / "preset.json",
    }


def test_every_kind_is_written_by_its_writer_and_read_by_the_reader(written):
    assert set(written) == set(SCHEMAS)  # a new kind of file needs a case here
    for kind, path in written.items():
        value = read_result(path, kind)
        assert value == json.loads(path.read_text())
        for other in ("train", "probe", "fad"):  # a file of one kind is not taken for another
            if other != kind and SCHEMAS[other] != SCHEMAS[kind]:
                with pytest.raises(ResultFileError, match=f"{path} is not a valid {other} result file"):
                    read_result(path, other)


@pytest.mark.parametrize(
    "kind, edit, why",
    [
        ("train", lambda d: d.update(epochs="1"), "epochs is '1', expected an integer"),
        ("train", lambda d: d["reconstruction_mse"].update(value=float("nan")), "reconstruction_mse.value is nan"),
        ("train", lambda d: d.pop("parameters"), "missing parameters"),
        ("train", lambda d: d.update(lr="fast"), "lr is 'fast', expected a finite number"),
        ("config", lambda d: d.update(model_config=[1]), "model_config is list, expected an object"),
        (
            "evaluate",
            lambda d: d["reconstruction_mse"].update(n=1.5),
            "reconstruction_mse.n is 1.5, expected an integer",
        ),
        ("evaluate", lambda d: d.update(parameters={"by_module": {}}), "missing parameters.total"),
        (
            "probe",
            lambda d: d["information_retention"].pop("linear_probe"),
            "missing information_retention.linear_probe",
        ),
        ("probe", lambda d: d.update(model=3), "model is int, expected a string"),
    ],
)
def test_a_hand_edited_file_names_its_path_and_field(written, tmp_path, kind, edit, why):
    value = json.loads(written[kind].read_text())
    edit(value)
    path = tmp_path / written[kind].name
    path.write_text(json.dumps(value))
    with pytest.raises(ResultFileError, match=f"^{path} is not a valid {kind} result file \\(.*{why}.*\\); delete it"):
        read_result(path, kind)
    with pytest.raises(ValueError, match=f"refusing to write {path} as a {kind} result file: .*{why}"):
        write_result(path, kind, value)  # the writer refuses what the reader would


def test_damaged_files_are_refused(tmp_path):
    path = tmp_path / "metrics.json"
    for text, why in [
        ('{"model": "esv', "Unterminated string"),
        ("[1, 2]", "holds a JSON list"),
        ("", "Expecting value"),
    ]:
        path.write_text(text)
        with pytest.raises(ResultFileError, match=f"{path} is not a valid train result file .*{why}"):
            read_result(path, "train")
    with pytest.raises(ResultFileError, match="No such file"):
        read_result(tmp_path / "absent.json", "train")


def test_metric_names_come_from_one_registry(written):
    """The CLI's --metrics choices, the file's keys, the MLflow names and the report's columns."""
    from esvae_pipeline.report import RunResults, run_row
    from esvae_pipeline.tracking import stage_metrics

    # The names users type, read in files, filter on in MLflow and see as columns, written out by hand:
    # the file key, the MLflow metric and the report column of each scalar metric.
    names = {
        "reconstruction_mse": ("eval_mse", "mse"),
        "fid": ("fid", "fid"),
        "kid": ("kid", "kid"),
        "inception_score": ("inception_score", "inception_score"),
        "fid_clean": ("fid_clean", "fid_clean"),
        "fad": ("fad", "fad"),
        "fad_published": ("fad_published", "fad_published"),
    }
    assert CLI_METRICS == (
        "mse", "fid", "kid", "is", "fid_clean", "fad", "fad_published", "params", "spikes", "sampling"
    )  # fmt: skip
    assert len({m.key for m in METRICS}) == len(METRICS) == len({m.option for m in METRICS})
    evaluated = {key: {"value": float(i + 1), "name": f"{key}@8"} for i, key in enumerate(names)}
    tracked = stage_metrics("evaluate", evaluated)
    assert tracked == {mlflow: float(i + 1) for i, (mlflow, _) in enumerate(names.values())}
    row = run_row(RunResults(grid.RunPoint("fashion", "esvae", "poisson", 4, 0), evaluate=evaluated))
    assert {column: row[column] for _, column in names.values()} == {
        column: float(i + 1) for i, (_, column) in enumerate(names.values())
    }
