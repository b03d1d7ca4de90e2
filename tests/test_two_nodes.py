"""Two receiving nodes on one PostgreSQL database and one data directory (issue 14,
point 2): the series of one study arrive at both at once, one series even split between
them, and the study is grouped once, each series completed and analysed exactly once.
Everything runs for real: two `trauma-node serve` processes on different ports, Debian's
PostgreSQL on loopback, DCMTK storescu."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, select

from node.store.tables import Instance, Job, Series, Study
from support.nodes import FAST, storescu, wait_for
from support.phantom import PhantomSpec, write_series
from support.postgres import PostgresServer

SERIES_SPEC = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125),
                   slice_spacing=5.0, blood="splenic_injury", blush=True)


def _send_at_once(sends: list[tuple[list[Path], int]]) -> None:
    errors: list[BaseException] = []

    def send(paths: list[Path], port: int) -> None:
        try:
            storescu(paths, port)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=s) for s in sends]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)


def _analysed(series: dict | None) -> bool:
    return bool(series and series["state"] == "done")


def test_two_nodes_on_one_database_group_complete_and_analyse_each_series_once(
        node_factory, tmp_path):
    study_uid = generate_uid()
    phases = [write_series(PhantomSpec(**SERIES_SPEC, study_uid=study_uid, seed=n),
                           tmp_path / f"series-{n}") for n in range(3)]
    with PostgresServer() as pg:
        config = FAST.replace("[storage]\n", f'[storage]\ndatabase_url = "{pg.url}"\n')
        first = node_factory(config, name="a")
        second = node_factory(config, name="b", start=False)
        second.data_dir = first.data_dir  # one shared data directory
        second.start()
        split = phases[2].paths
        # Each node gets a series of the study, and half of the third, all at the same time.
        _send_at_once([(phases[0].paths, first.dicom_port), (phases[1].paths, second.dicom_port),
                       (split[::2], first.dicom_port), (split[1::2], second.dicom_port)])
        try:
            for truth in phases:
                wait_for(lambda: _analysed(first.series(truth.spec.series_uid)), timeout=60,
                         what=f"series {truth.spec.series_uid} analysed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nnode a:\n{first.log()[-3000:]}"
                                 f"\nnode b:\n{second.log()[-3000:]}") from None

        engine = create_engine(pg.url)
        with engine.connect() as conn:
            studies = conn.execute(select(Study.id).where(Study.study_uid == study_uid)).all()
            assert len(studies) == 1  # grouped once, though both nodes began it at once
            series = conn.execute(select(Series.id, Series.series_uid, Series.version).where(
                Series.study_id == studies[0].id)).all()
            assert sorted(s.series_uid for s in series) == sorted(
                t.spec.series_uid for t in phases)
            for s in series:
                assert s.version == 1  # completed once: no second version made by a race
                count = conn.execute(select(func.count()).select_from(Instance).where(
                    Instance.series_id == s.id)).scalar_one()
                assert count == 40
                jobs = conn.execute(select(Job.series_version, Job.state, Job.worker).where(
                    Job.series_id == s.id)).all()
                assert [(j.series_version, j.state) for j in jobs] == [(1, "done")], jobs
            workers = {j.worker for j in conn.execute(select(Job.worker)).all()}
        engine.dispose()
        # The split series' senders were on both nodes: each was recorded by its own node.
        assert all(w.split("/")[0].endswith((f":{first.dicom_port}", f":{second.dicom_port}"))
                   for w in workers), workers
        for node in (first, second):
            assert "Traceback" not in node.log()
        first.stop()
        second.stop()
