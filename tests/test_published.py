"""Published paper numbers: every file loads, references are valid, spot checks against the papers' text."""
from __future__ import annotations

import textwrap

import pytest

from benchmark.published import PaperTable, PublishedError, Row, RunSpec, get_table, load_tables


@pytest.fixture(scope="module")
def tables() -> list[PaperTable]:
    return load_tables()


def test_every_table_has_a_number_and_unique_ids(tables):
    ids = [t.id for t in tables]
    assert len(ids) == len(set(ids))
    assert {t.paper for t in tables} == {"ssast", "mae_ast", "asit"}
    for t in tables:
        assert any(v is not None for r in t.rows for v in r.values.values()), t.id
        assert len({r.label for r in t.rows}) == len(t.rows), t.id
        for r in t.rows:
            assert set(r.values) == {c.key for c in t.columns}
            assert r.source


def test_same_label_same_run_across_tables(tables):
    runs: dict[str, RunSpec | None] = {}
    for t in tables:
        for r in t.rows:
            assert runs.setdefault(r.label, r.run) == r.run, r.label


def test_run_specs_reference_project(tables):
    import upstream

    names = set(upstream.list_upstreams())
    for t in tables:
        for r in t.rows:
            if r.run is not None:
                assert r.run.upstream in names
                assert r.run.ckpt is None or r.run.pretrain is None


@pytest.mark.parametrize("table_id, label, key, expected", [
    ("ssast_main", "ssast_patch_400", "as20k", 31.0),  # SSAST poster 'Main Results', SSAST 400, AS
    ("ssast_main", "ssast_patch_400", "sid", 64.2),  # printed 64.2 in 'Main Results' ...
    ("ssast_masked_patches", "ssast_patch_400", "sid", 64.3),  # ... and 64.3 in 'Ablation Study'
    ("ssast_masked_patches", "ssast_patch_100", "esc50", 85.3),  # 'Ablation Study', '100' row
    ("ssast_pretext", "ssast_patch_400_gen", "as20k", 16.1),  # 'Ablation Study', Generative
    ("ssast_pretrain_data", "ssast_patch_400_librispeech", "er", 58.3),  # 'Ablation Study', Librispeech
    ("ssast_patch_vs_frame", "ssast_frame_400", "er", 60.5),  # 'Patch Based- vs Frame Based- AST'
    ("ssast_patch_vs_frame", "ssast_frame_250", "esc50", None),  # unreadable in the extracted text
    ("asit_main", "asit_base", "ks1", 98.1),  # ASiT Table I, ASiT (ours) SC-V1
    ("asit_main", "panns", "ks2", None),  # ASiT Table I prints '–'
    ("asit_main", "mae_ast_patch", "esc50", 90.0),  # ASiT Table I, MAE-AST row
    ("asit_components", "asit_small_10ep_gmml", "as20k", 25.5),  # ASiT Table II
    ("asit_mask_alignment", "asit_small_10ep_aligned", "as20k", 26.9),  # ASiT Section 4.4 text
    ("asit_init", "asit_small_imagenet_as2m", "as20k", 31.5),  # ASiT Table III, INet AS-2M / ViT-Small
    ("mae_ast_main", "mae_ast_patch", "sid", 63.3),  # MAE-AST as cited in ASiT Table I
])
def test_spot_checks(table_id, label, key, expected):
    row = next(r for r in get_table(table_id).rows if r.label == label)
    assert row.values[key] == expected


@pytest.mark.parametrize("table_id", ["asit_components", "asit_mask_alignment"])
def test_asit_ablation_rows_all_run(table_id):
    """Every ASiT Table II and Section 4.4 row has a run: 'corr -' rows turn corruption off, the aligned row
    snaps the blocks to the patch grid."""
    runs = {r.label: r.run for r in get_table(table_id).rows}
    assert all(run is not None for run in runs.values()), table_id
    if table_id == "asit_components":
        for label in ("asit_small_10ep_autoencoder", "asit_small_10ep_global"):
            assert "objective.corrupt=false" in runs[label].pretrain_overrides
    else:
        assert "objective.aligned_blocks=true" in runs["asit_small_10ep_aligned"].pretrain_overrides
        assert not any("aligned" in o for o in runs["asit_small_10ep"].pretrain_overrides)


def test_get_table_unknown_lists_ids():
    with pytest.raises(ValueError, match="ssast_main"):
        get_table("nope")


GOOD = """
tables:
  - id: demo
    paper: demo
    title: Demo
    source: Demo Table 1
    columns:
      - {key: ks2, task: speech_commands_v2, mode: finetune, metric: accuracy}
    rows:
      - label: a
        paper_label: A
        values: {ks2: 90.0}
        run: {upstream: ssast_patch_mini}
"""


def _write(tmp_path, text, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_file_and_default_source(tmp_path):
    (table,) = load_tables([_write(tmp_path, GOOD, "good.yaml")])
    assert table.rows[0].source == "Demo Table 1, row 'A'"
    assert table.rows[0].run == RunSpec(upstream="ssast_patch_mini")


@pytest.mark.parametrize("old, new, message", [
    ("paper_label: A", "paper_label: A\n        extra: 1", "unknown key.*'extra'"),
    ("values: {ks2: 90.0}", "values: {ks2: 90.0, ks1: 1.0}", r"\['ks1'\] are not columns"),
    ("values: {ks2: 90.0}", "values: {}", "lacks column"),
    ("values: {ks2: 90.0}", "values: {ks2: 190.0}", "values.ks2"),
    ("mode: finetune", "mode: tuned", "'mode' must be one of"),
    ("metric: accuracy", "metric: f1", "'metric' must be one of"),
    ("upstream: ssast_patch_mini", "upstream: no_such_upstream", "not a registered upstream"),
    ("upstream: ssast_patch_mini", "upstream: ssast_patch_mini, pretrain: configs/pretrain/nope.yaml, "
     "pretrain_upstream: ssast_patch", "not a recipe file"),
    ("upstream: ssast_patch_mini", "upstream: ssast_patch_mini, pretrain: "
     "configs/pretrain/ssast_patch_mini.yaml", "'pretrain_upstream' is required"),
    ("upstream: ssast_patch_mini", "upstream: ssast_patch_mini, pretrain: "
     "configs/pretrain/ssast_patch_mini.yaml, pretrain_upstream: ssast_patch, "
     "pretrain_overrides: [objective.mask_patchez=3]", "mask_patchez"),
    ("upstream: ssast_patch_mini", "upstream: mae_ast_patch_mini, pretrain: "
     "configs/pretrain/ssast_patch_mini.yaml, pretrain_upstream: ssast_patch",
     "does not match the pretrained encoder"),
    ("upstream: ssast_patch_mini", "upstream: ssast_patch_mini, overrides: [optimizer.lrr=1]", "lrr"),
    ("upstream: ssast_patch_mini", "upstream: asit_mini, pretrain: configs/pretrain/asit_mini.yaml, "
     "pretrain_upstream: asit, pretrain_overrides: [objective.corrupt=false, objective.aligned_blocks=true]",
     "aligned_blocks=true needs corrupt=true"),
])
def test_validation_errors_name_file_and_key(tmp_path, old, new, message):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(PublishedError, match=message) as info:
        load_tables([path])
    assert str(path) in str(info.value)


def test_duplicates_fail(tmp_path):
    row = GOOD.split("    rows:\n")[1]
    with pytest.raises(PublishedError, match="duplicate row label"):
        load_tables([_write(tmp_path, GOOD + row)])
    a, b = _write(tmp_path, GOOD, "a.yaml"), _write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(PublishedError, match="duplicate table id 'demo'"):
        load_tables([a, b])


def test_label_with_two_runs_fails(tmp_path):
    other = GOOD.replace("id: demo", "id: demo2").replace("ssast_patch_mini", "ssast_frame_mini")
    with pytest.raises(PublishedError, match="one label is one run"):
        load_tables([_write(tmp_path, GOOD, "a.yaml"), _write(tmp_path, other, "b.yaml")])


def test_hand_built_table_with_empty_rows():
    row = Row(label="x", paper_label="X", source="demo", values={"k": None}, run=None)
    assert row.values["k"] is None and row.run is None
