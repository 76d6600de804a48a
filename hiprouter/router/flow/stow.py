"""DICOMweb STOW-RS: send queued objects to a `dicomweb` destination (PS3.18 10.5).

The dispatcher hands a claimed batch here; it goes out in requests of up to
`batch_size` instances (multipart/related; type="application/dicom") with dicomweb-client,
whose own HTTP retries are off: retries, backoff and the dead letter are the dispatcher's,
as for C-STORE. The STOW-RS response says per instance whether it was stored
(ReferencedSOPSequence, a WarningReason is still stored) or not (FailedSOPSequence with a
FailureReason); an HTTP error or a connection failure fails every instance of the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from hiprouter.config import DicomwebDestination


@dataclass
class StowResult:
    """Outcome of one instance: the HTTP status of its request and an error (None: stored)."""

    status: int | None
    error: str | None


def make_client(dest: DicomwebDestination) -> Any:
    """A DICOMwebClient with the destination's auth, TLS and timeout, without its own
    retries."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    auth = dest.auth
    if auth.username is not None and auth.password_file is not None:
        session.auth = (auth.username, _secret(auth.password_file))
    elif auth.bearer_token_file is not None:
        session.headers["Authorization"] = f"Bearer {_secret(auth.bearer_token_file)}"
    tls = dest.tls
    session.verify = str(tls.ca_file) if tls.verify and tls.ca_file else tls.verify
    if tls.cert_file is not None:
        session.cert = (str(tls.cert_file), str(tls.key_file)) if tls.key_file \
            else str(tls.cert_file)
    client = DICOMwebClient(url=dest.url.rstrip("/"), session=session, timeout=dest.timeout_s)
    client.set_http_retry_params(retry=False)
    return client


def _secret(path: Any) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def _reason(item: Dataset) -> str:
    code = item.get("FailureReason")
    return f"STOW-RS failure reason 0x{int(code):04X}" if code is not None else \
        "STOW-RS failed (no reason given)"


def parse_response(response: Dataset, uids: Sequence[str], status: int) -> dict[str, StowResult]:
    """Per SOP Instance UID: stored or failed, from a STOW-RS response data set."""
    stored = {str(i.get("ReferencedSOPInstanceUID", "")) for i in
              response.get("ReferencedSOPSequence", [])}
    failed = {str(i.get("ReferencedSOPInstanceUID", "")): _reason(i) for i in
              response.get("FailedSOPSequence", [])}
    listed = bool(stored or failed)
    out = {}
    for uid in uids:
        if uid in failed:
            out[uid] = StowResult(status, failed[uid])
        elif uid in stored or not listed:  # an empty 200 response: all stored
            out[uid] = StowResult(status, None)
        else:
            out[uid] = StowResult(status, "not in the STOW-RS response")
    return out


def store(client: Any, paths: Sequence[str], uids: Sequence[str]) -> dict[str, StowResult]:
    """One STOW-RS request with these files; per SOP Instance UID the outcome."""
    import requests

    try:
        datasets = [dcmread(p) for p in paths]
    except Exception as exc:
        return {u: StowResult(None, f"cannot read file: {exc}") for u in uids}
    try:
        response = client.store_instances(datasets=datasets)
    except requests.HTTPError as exc:
        resp = exc.response
        code = resp.status_code if resp is not None else None
        body = _body_dataset(resp)
        if body is not None and code == 409:  # some failed: the body says which
            return parse_response(body, uids, code)
        text = f"HTTP {code}" + (f" {resp.reason}" if resp is not None and resp.reason else "")
        return {u: StowResult(code, f"STOW-RS {text}") for u in uids}
    except (requests.RequestException, OSError, ValueError) as exc:
        return {u: StowResult(None, f"STOW-RS {type(exc).__name__}: {exc}"[:500])
                for u in uids}
    return parse_response(response, uids, 200)


def _body_dataset(resp: Any) -> Dataset | None:
    if resp is None or not resp.content:
        return None
    try:
        if "json" in resp.headers.get("Content-Type", ""):
            return Dataset.from_json(resp.json())
    except Exception:
        return None
    return None
