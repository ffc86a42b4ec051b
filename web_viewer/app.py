"""The trame page: datastore list, infer through MONAI Label's client, slice view, scores, verdict."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from trame.app import get_server
from trame.ui.vuetify3 import SinglePageLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3

from web_viewer.data import (
    Case,
    load_case,
    load_scores_json,
    orientation_caption,
    score_plot_svg,
    slice_png_data_url,
)

logger = logging.getLogger(__name__)

DEFAULT_SERVER = "http://127.0.0.1:8000"
MODEL = "medsad"


def lesions_text(result: dict[str, Any]) -> str:
    """The verdict's lesion phrase (e.g. ``; 2 lesions, the largest 1,234 mm³ on slices 40-45``) from a
    result's lesion table (``n_lesions``/``lesions`` of ``medsad infer`` and the server); empty for
    older results."""
    if "n_lesions" not in result:
        return ""
    n = int(result["n_lesions"])
    if n == 0:
        return "; no lesion"
    largest = (result.get("lesions") or [{}])[0]
    where = f" on slices {largest['slices'][0]}-{largest['slices'][1]}" if largest.get("slices") else ""
    return f"; {n} lesion{'s' if n != 1 else ''}, the largest {_size(largest)}{where}"


def _size(lesion: dict[str, Any]) -> str:
    """A lesion-table row's size: ``1,234 mm³``, or voxels without a voxel size."""
    mm3 = lesion.get("volume_mm3")
    return f"{float(mm3):,.0f} mm³" if mm3 is not None else f"{int(lesion.get('voxels', 0)):,} voxels"


def low_confidence_text(result: dict[str, Any]) -> str:
    """The verdict's hidden-region phrase (``; 1 low-confidence region hidden, the largest 1,234 mm³``):
    what the operating point's minimum mean removed (``low_confidence``); empty when nothing."""
    hidden = result.get("low_confidence") or {}
    n = int(hidden.get("n_lesions") or 0)
    if n == 0:
        return ""
    largest = _size((hidden.get("lesions") or [{}])[0])
    return f"; {n} low-confidence region{'s' if n != 1 else ''} hidden, the largest {largest}"


def warnings_text(result: dict[str, Any]) -> str:
    """The verdict's calibration phrase (``; calibration warns: ...``): what made the model's
    operating point weakly determined (``operating_point.warnings``); empty when nothing did."""
    warnings = [str(w) for w in (result.get("operating_point") or {}).get("warnings") or []]
    if not warnings:
        return ""
    more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
    return f"; calibration warns: {warnings[0]}{more}"


def familiarity_text(result: dict[str, Any]) -> str:
    """The verdict's unfamiliar-scan phrase (``; warning: this scan's intensities are unlike ...``):
    the scan is unlike the model's training volumes, so its decisions may not hold; empty otherwise."""
    warning = (result.get("familiarity") or {}).get("warning")
    return f"; warning: {warning}" if warning else ""


def profile_text(result: dict[str, Any]) -> str:
    """The verdict's profile phrase (``; decided at calibration profile site_b``): which of the
    model's operating points decided, when it is not the model's own (``default``)."""
    profile = (result.get("operating_point") or {}).get("profile")
    return f"; decided at calibration profile {profile}" if profile and profile != "default" else ""


def image_title(image_id: str, info: dict[str, Any]) -> str:
    """An image's line in the list: its id and what the server's scoring stored for it (the
    calibrated volume score and verdict, and whether the scan is unlike the model's training
    scans, ``anomaly_familiar``)."""
    title = image_id
    score = info.get("anomaly_score")
    if isinstance(score, (int, float)):
        title += f"  score {score:.3f} ({'abnormal' if info.get('anomaly_abnormal') else 'normal'})"
    if info.get("anomaly_familiar") is False:
        title += "  - unlike the training scans"
    return title


def _error_text(exc: BaseException, server_url: str) -> str:
    """One line for the page: what went wrong, without a traceback."""
    msg = str(getattr(exc, "msg", None) or exc or type(exc).__name__)
    if isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, ValueError):
        return f"cannot reach the MONAI Label server at {server_url} ({msg}); is it running (make run)?"
    status = getattr(exc, "status_code", None)
    found = re.match(r"Status: (\d+); Response: (.*)", msg, re.S)  # MONAILabelClientException's text
    if found:
        status, msg = int(found.group(1)), found.group(2)
        try:
            msg = str(json.loads(msg).get("detail", msg))
        except (ValueError, AttributeError):
            pass
    if status == 404:
        return f"unknown image: {msg}"
    return msg if status is None else f"server answered {status}: {msg}"


class Viewer:
    """The viewer state and its actions; ``server`` is the trame server."""

    def __init__(self, server_url: str, workdir: Path, name: str = "medsad_web_viewer", profile: str = "") -> None:
        self.server = get_server(name, client_type="vue3")
        self.profile = profile.strip()  # the model's calibration profile to ask for ("": the server's)
        self.state = self.server.state
        self.server_url = server_url.rstrip("/")
        self.workdir = workdir
        self.case: Case | None = None
        s = self.state
        s.trame__title = "MedSAD viewer"
        s.server_url = self.server_url
        s.images = []
        s.image_id = None
        s.message = ""
        s.message_type = "info"
        s.busy = False
        s.slice_index = 0
        s.n_slices = 1
        s.slice_src = ""
        s.orientation = ""
        s.slice_has_lesion = False
        s.plot_svg = ""
        s.score_rows = []
        s.verdict = ""
        s.volume_score = ""
        s.model_sha = ""
        s.case_name = ""
        s.show_overlay = True
        self.state.change("slice_index", "show_overlay")(self._on_slice)
        ctrl = self.server.controller
        ctrl.refresh = self.refresh
        ctrl.run_infer = self.run_infer
        ctrl.goto_worst = self.goto_worst
        self._ui()

    # ---- actions -------------------------------------------------------------------------------
    def _client(self) -> Any:
        from monailabel.client import MONAILabelClient

        return MONAILabelClient(self.server_url, tmpdir=str(self.workdir))

    def _say(self, text: str, kind: str = "error") -> None:
        (logger.warning if kind == "error" else logger.info)("%s", text)
        self.state.message = text
        self.state.message_type = kind

    def refresh(self) -> None:
        """List the datastore's images with their stored anomaly score and verdict."""
        try:
            listing = self._client().datastore()
        except Exception as exc:  # every failure is one message on the page
            self._say(_error_text(exc, self.server_url))
            self.state.images = []
            return
        rows = []
        for image_id, entry in sorted((listing.get("objects") or {}).items()):
            info = (entry.get("image") or {}).get("info") or {}
            rows.append({"id": image_id, "title": image_title(image_id, info)})
        self.state.images = rows
        if self.state.message_type == "error" and "cannot reach" in self.state.message:
            self.state.message = ""

    def refresh_on_connect(self) -> None:
        """A page connected: list the images again (the server may have come up since)."""
        with self.state:
            self.refresh()

    def run_infer(self) -> None:
        """Start ``medsad`` on the chosen image (in a worker thread; the page keeps answering)."""
        image_id = self.state.image_id
        if not image_id:
            self._say("choose an image first")
            return
        self.state.busy = True
        self._say(f"running {MODEL} on {image_id} ...", "info")
        asyncio.get_event_loop().create_task(self._infer(str(image_id)))

    async def _infer(self, image_id: str) -> None:
        try:
            case = await asyncio.to_thread(self._infer_blocking, image_id)
        except Exception as exc:  # one message, the viewer keeps running
            with self.state:
                self.state.busy = False
                self._say(_error_text(exc, self.server_url))
            return
        with self.state:
            self.state.busy = False
            self.show_case(case)
            self._say(f"{image_id}: done", "success")

    def _infer_blocking(self, image_id: str) -> Case:
        client = self._client()
        mask_file, result = client.infer(MODEL, image_id, {"profile": self.profile} if self.profile else {})
        if isinstance(result, str):
            result = json.loads(result)
        result = result.get("params", result) if isinstance(result, dict) else {}
        downloads = [Path(mask_file)] if mask_file else []
        try:
            image_path = self._image_file(client, image_id)
            downloads.append(image_path)
            return load_case(image_path, mask_file, result, name=image_id)
        finally:  # the case is in memory now: the viewer keeps no copy of a user's scans
            for path in downloads:
                path.unlink(missing_ok=True)

    def _image_file(self, client: Any, image_id: str) -> Path:
        """Download the datastore image (the MONAI Label ``/datastore/image`` route)."""
        import urllib.parse
        import urllib.request

        url = f"{self.server_url}/datastore/image?image={urllib.parse.quote_plus(image_id)}"
        with urllib.request.urlopen(url, timeout=60) as res:
            disposition = res.headers.get("content-disposition", "")
            fname = disposition.split("filename=")[-1].strip('"; ') if "filename=" in disposition else ""
            suffix = ".nrrd" if fname.endswith(".nrrd") else ".nii.gz" if fname.endswith(".gz") else ".nii"
            out = Path(tempfile.mkstemp(prefix=f"{image_id}_", suffix=suffix, dir=self.workdir)[1])
            out.write_bytes(res.read())
        return out

    def open_local(self, scores_json: str | Path, image: str | Path | None = None, mask: str | Path | None = None):
        """Show ``medsad infer`` outputs: ``<stem>_scores.json`` (naming its input and mask)."""
        self.state.server_url = f"local: {scores_json}"
        try:
            result = load_scores_json(scores_json)
            image = image or result.get("input")
            mask = mask or result.get("mask")
            if not image or not mask:
                raise ValueError(f"{scores_json}: names no input/mask; pass --image and --mask")
            self.show_case(load_case(image, mask, result))
        except ValueError as exc:
            self._say(str(exc))

    def show_case(self, case: Case) -> None:
        """Put a case on the page: scores, table, verdict, the most anomalous slice."""
        self.case = case
        r = case.result
        s = self.state
        s.case_name = case.name
        s.n_slices = case.n_slices
        scores = [float(v) for v in r.get("slice_scores") or []]
        thr = r.get("slice_threshold")
        s.score_rows = [
            {"index": i, "score": f"{v:.3f}", "abnormal": thr is not None and v >= thr} for i, v in enumerate(scores)
        ]
        vs = r.get("volume_score")
        s.volume_score = f"{vs:.3f}" if isinstance(vs, (int, float)) else "-"
        vt = r.get("volume_threshold")
        verdict = "ABNORMAL" if r.get("volume_abnormal") else "normal"
        s.verdict = verdict + (f" (volume score {s.volume_score}, threshold {vt:.3f})" if vt is not None else "")
        s.verdict += lesions_text(r) + low_confidence_text(r) + profile_text(r) + familiarity_text(r) + warnings_text(r)
        s.model_sha = str(r.get("checkpoint_sha256") or "- (not in the result)")
        worst = int(r.get("worst_slice", 0))
        if s.slice_index == worst:
            self._on_slice()
        s.slice_index = worst

    def goto_worst(self) -> None:
        if self.case is not None:
            self.state.slice_index = int(self.case.result.get("worst_slice", 0))

    def _on_slice(self, **_: Any) -> None:
        case = self.case
        if case is None:
            return
        i = min(max(int(self.state.slice_index or 0), 0), case.n_slices - 1)
        self.state.slice_src = slice_png_data_url(case, i, bool(self.state.show_overlay))
        self.state.orientation = orientation_caption(case)
        self.state.slice_has_lesion = bool(case.mask.take(i, axis=case.axis).any())
        scores = [float(v) for v in case.result.get("slice_scores") or []]
        self.state.plot_svg = score_plot_svg(scores, case.result.get("slice_threshold"), i)

    # ---- page ----------------------------------------------------------------------------------
    def _ui(self) -> None:
        with SinglePageLayout(self.server) as layout:
            layout.title.set_text("MedSAD viewer")
            with layout.toolbar:
                v3.VSpacer()
                html.Span("{{ server_url }}", classes="text-caption mr-4")
            with layout.content:
                with v3.VContainer(fluid=True):
                    v3.VAlert(
                        v_if="message",
                        id="message",
                        type=("message_type",),
                        text=("message",),
                        density="compact",
                        classes="mb-2",
                    )
                    with v3.VRow():
                        with v3.VCol(cols=12, md=3):
                            v3.VSelect(
                                id="image-select",
                                label="datastore image (score, verdict)",
                                items=("images",),
                                item_title="title",
                                item_value="id",
                                v_model=("image_id",),
                                density="compact",
                            )
                            v3.VTextField(
                                id="image-id",
                                label="or image id",
                                v_model=("image_id",),
                                density="compact",
                                hide_details=True,
                                classes="mb-2",
                            )
                            v3.VBtn("Refresh list", id="refresh", click=self.refresh, classes="mr-2 mb-2")
                            v3.VBtn(
                                "Run medsad",
                                id="run",
                                click=self.run_infer,
                                color="primary",
                                loading=("busy",),
                                classes="mb-2",
                            )
                            html.Div("case: {{ case_name || '-' }}", id="case-name", classes="mt-2")
                            html.Div("verdict: {{ verdict || '-' }}", id="verdict", classes="font-weight-bold")
                            html.Div("model sha256: {{ model_sha || '-' }}", id="model-sha", classes="text-caption")
                        with v3.VCol(cols=12, md=5):
                            html.Div("slice {{ slice_index }} / {{ n_slices - 1 }}", id="slice-label")
                            v3.VSlider(
                                id="slice-slider",
                                v_model=("slice_index",),
                                min=0,
                                max=("n_slices - 1",),
                                step=1,
                                density="compact",
                                hide_details=True,
                            )
                            html.Img(id="slice-img", src=("slice_src",), v_if="slice_src", style="max-width:100%")
                            html.Div("{{ orientation }}", id="orientation", classes="text-caption")
                            v3.VCheckbox(v_model=("show_overlay",), label="Lesion overlay", density="compact")
                            v3.VBtn("Go to most anomalous slice", id="goto-worst", click=self.goto_worst)
                        with v3.VCol(cols=12, md=4):
                            html.Div(v_html=("plot_svg",), id="plot")
                            with html.Div(style="max-height:420px; overflow-y:auto"):
                                with html.Table(id="score-table", classes="text-body-2", style="width:100%"):
                                    with html.Tr():
                                        html.Th("slice")
                                        html.Th("score")
                                        html.Th("abnormal")
                                    with html.Tr(
                                        v_for="row in score_rows",
                                        key="row.index",
                                        click="slice_index = row.index",
                                        style=(
                                            "row.index === slice_index ? 'background:#e3f2fd;cursor:pointer' "
                                            ": 'cursor:pointer'",
                                        ),
                                        __properties=[("data_slice", "data-slice")],
                                        data_slice=("row.index",),
                                        classes="score-row",
                                    ):
                                        html.Td("{{ row.index }}")
                                        html.Td("{{ row.score }}")
                                        html.Td("{{ row.abnormal ? 'yes' : '' }}")
