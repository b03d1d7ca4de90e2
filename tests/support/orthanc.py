"""A real Orthanc PACS on loopback ports for the delivery tests (Debian package `orthanc`),
optionally with its DICOMweb plugin (Debian package `orthanc-dicomweb`) for the viewer test
and the DICOMweb destinations, optionally with HTTP basic auth."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class Orthanc:
    def __init__(self, workdir: Path, dicom_port: int, http_port: int, aet: str = "PACS",
                 tls: dict[str, str] | None = None,
                 modalities: dict[str, list] | None = None, dicomweb: bool = False,
                 users: dict[str, str] | None = None):
        """tls: {"certificate", "private_key", "trusted"} PEM paths for DICOM TLS;
        the calling node must then present a certificate signed by "trusted".
        modalities: Orthanc's DicomModalities, e.g. {"trauma": ["TRAUMA_AI", host, port]}.
        dicomweb: load the DICOMweb plugin, at {url}/dicom-web/, its metadata read in full
        from the stored files (an SR's content tree is not among Orthanc's main tags).
        users: {username: password}; then its HTTP API and DICOMweb need basic auth (these
        helpers use the first user).
        Every instance received, a second copy of one too, is listed by receptions() with
        how it came (a Lua ReceivedInstanceFilter, called before Orthanc stores it)."""
        self.workdir = workdir
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.aet = aet
        self.proc: subprocess.Popen | None = None
        # What the helpers' own requests need: the first user's credentials.
        self.client = {"auth": next(iter(users.items())) if users else None}
        workdir.mkdir(parents=True, exist_ok=True)
        self.received = workdir / "received.txt"
        lua = workdir / "receptions.lua"
        lua.write_text(f"""function ReceivedInstanceFilter(dicom, origin, info)
  local log = io.open({json.dumps(str(self.received))}, "a")
  log:write(origin["RequestOrigin"] .. " " .. dicom.SOPInstanceUID .. "\\n")
  log:close()
  return true
end
""")
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "test-pacs",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "DicomAet": aet,
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "LuaScripts": [str(lua)],
            "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
            **({"DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                             "StudiesMetadata": "Full", "SeriesMetadata": "Full"}}
               if dicomweb else {}),
            "StableAge": 3600,
            "DicomModalities": modalities or {},
            **({"DicomTlsEnabled": True,
                "DicomTlsCertificate": tls["certificate"],
                "DicomTlsPrivateKey": tls["private_key"],
                "DicomTlsTrustedCertificates": tls["trusted"],
                "DicomTlsRemoteCertificateRequired": True} if tls else {}),
        }))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> "Orthanc":
        self.log = open(self.workdir / "orthanc.log", "ab")
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.workdir / 'orthanc.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1,
                             **self.client).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def get(self, path: str):
        response = httpx.get(f"{self.url}{path}", timeout=10, **self.client)
        response.raise_for_status()
        return response.json()

    def upload(self, path: Path) -> str:
        """Store a file through the REST API; returns Orthanc's instance id."""
        response = httpx.post(f"{self.url}/instances", content=path.read_bytes(),
                              timeout=30, **self.client)
        response.raise_for_status()
        return response.json()["ID"]

    def instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every instance Orthanc holds."""
        uids = set()
        for orthanc_id in self.get("/instances"):
            tags = self.get(f"/instances/{orthanc_id}/simplified-tags")
            uids.add(tags["SOPInstanceUID"])
        return uids

    def receptions(self, origin: str = "DicomProtocol") -> list[str]:
        """The SOP Instance UID of every instance received, in order, copies included, that
        came by origin: "DicomProtocol" (C-STORE), "Plugins" (DICOMweb STOW-RS), "RestApi"."""
        lines = self.received.read_text().splitlines() if self.received.exists() else []
        return [sop for how, _, sop in (line.partition(" ") for line in lines) if how == origin]

    def file(self, sop_uid: str) -> bytes:
        found = httpx.post(f"{self.url}/tools/find", json={
            "Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}, timeout=10,
            **self.client).json()
        assert len(found) == 1, f"{sop_uid} not in Orthanc"
        return httpx.get(f"{self.url}/instances/{found[0]}/file", timeout=30,
                         **self.client).content
