"""The verdict SR (dicom_out.verdict_sr, GET /studies/{uid}/verdicts.dcm): a Comprehensive SR
of the readers' current verdicts that references the AI SR and SEG they judged, valid for
dciodvfy and read back with highdicom, one assessment per verdict with its reader."""

from __future__ import annotations

import io
import subprocess

import highdicom as hd
import httpx
import pydicom

from support.nodes import AUTH
from support.verdict_support import AuditedApi, analysed_study

from dicom_out import codes, uids
from dicom_out.verdict_sr import ASSESSMENT, ASSESSMENT_TYPE, ASSESSED_RESULT, TRACKING_UID
from node.store import readers

DCIODVFY = "/usr/bin/dciodvfy"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _items(container, code) -> list:
    return [i for i in getattr(container, "ContentSequence", [])
            if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeValue == code.value]


def test_the_verdict_sr_references_the_ai_result_and_holds_each_assessment(tmp_path):
    with AuditedApi(tmp_path / "data") as api, httpx.Client(base_url=api.url, timeout=60) as client:
        study = analysed_study(api.settings, api.index)
        uid = study["study_uid"]
        _, alice = readers.add(api.index, "alice", "Example^Alice")
        _, bob = readers.add(api.index, "bob", "Dr Bob Müller")
        assert client.get(f"/studies/{uid}/verdicts.dcm", headers=AUTH).status_code == 409
        for token, body in [
                (alice, {"finding": "hemorrhage", "verdict": "accepted"}),
                (alice, {"finding": "hemorrhage", "verdict": "corrected",
                         "corrected_volume_ml": 72.25, "note": "Darmschlingen mitgezählt"}),
                (alice, {"finding": "organ/spleen", "verdict": "accepted"}),
                (bob, {"finding": "organ/liver", "verdict": "rejected", "note": "laceration"}),
                (bob, {"finding": "risk_tier", "verdict": "corrected", "note": "moderate"})]:
            assert client.post(f"/studies/{uid}/verdicts", headers=bearer(token),
                               json=body).status_code == 201
        got = client.get(f"/studies/{uid}/verdicts.dcm", headers=bearer(alice))
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "application/dicom"
        assert got.headers["x-verdicts"] == "4"  # alice's first hemorrhage verdict superseded
        again = client.get(f"/studies/{uid}/verdicts.dcm", headers=AUTH).content
        exports = [line for line in api.audit_lines() if 'csd-code="110106"' in line]
    path = tmp_path / "verdicts.dcm"
    path.write_bytes(got.content)

    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if line.startswith("Error")] == [], lines
    assert [line for line in lines if line.startswith("Warning")
            and "99TRAUMANODE" not in line] == [], lines

    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    ai_sr = pydicom.dcmread(study["sr_path"])
    assert sr.StudyInstanceUID == uid and sr.PatientID == ai_sr.PatientID
    assert sr.SeriesInstanceUID not in (ai_sr.SeriesInstanceUID,)
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence == {study["sr_uid"], study["seg_uid"]}
    assert {study["sr_uid"], study["seg_uid"]} <= {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in _items(sr, ASSESSED_RESULT)}

    assessments = _items(sr, ASSESSMENT)
    assert len(assessments) == 4
    found = {}
    for a in assessments:
        key = next(i.TextValue for i in a.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeValue == "112039")
        kind = _items(a, ASSESSMENT_TYPE)[0].ConceptCodeSequence[0].CodeMeaning
        person = next(str(i.PersonName) for i in a.ContentSequence
                      if i.ValueType == "PNAME")
        login = next(i.TextValue for i in a.ContentSequence
                     if i.ConceptNameCodeSequence[0].CodeValue == "128774")
        volume = [float(i.MeasuredValueSequence[0].NumericValue) for i in a.ContentSequence
                  if i.ValueType == "NUM"]
        tracking = [i.UID for i in _items(a, TRACKING_UID)]
        referenced = _items(a, ASSESSED_RESULT)[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert referenced == study["sr_uid"] and a.ObservationDateTime
        found[key] = (kind, person, login, volume, tracking)
    tracking_of = lambda key: [uids.tracking_uid(study["series_uid"], 1, key)]  # noqa: E731
    assert found["hemorrhage"] == ("Modified", "Example^Alice", "alice", [72.25],
                                   tracking_of("hemorrhage"))
    assert found["organ/spleen"] == ("Accepted", "Example^Alice", "alice", [],
                                     tracking_of("organ/spleen"))
    # the AI SR has no group for an uninjured liver, nor for the tier: no tracking UID
    assert found["organ/liver"] == ("Rejected", "Dr Bob Müller^", "bob", [], [])
    assert found["risk_tier"][0] == "Modified" and found["risk_tier"][4] == []
    notes = [i.TextValue for a in assessments for i in _items(a, codes.COMMENT)]
    assert "Darmschlingen mitgezählt" in notes
    # the same verdicts give the same object; the download is audited with who took it
    assert pydicom.dcmread(io.BytesIO(again)).SOPInstanceUID == sr.SOPInstanceUID
    assert len(exports) == 2 and 'UserID="alice"' in exports[0] and f'"{uid}"' in exports[0]


def test_without_the_ai_objects_there_is_no_sr(tmp_path):
    with AuditedApi(tmp_path / "data") as api, httpx.Client(base_url=api.url, timeout=60) as client:
        study = analysed_study(api.settings, api.index)
        _, alice = readers.add(api.index, "alice")
        client.post(f"/studies/{study['study_uid']}/verdicts", headers=bearer(alice),
                    json={"finding": "hemorrhage", "verdict": "accepted"})
        study["sr_path"].unlink()
        gone = client.get(f"/studies/{study['study_uid']}/verdicts.dcm", headers=AUTH)
        assert gone.status_code == 409 and "no longer on this node" in gone.json()["detail"]
