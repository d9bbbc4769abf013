"""The verdict card: status, the measurements that decide it against their reference, what is missing.

Reads the verdict contract (``CodebookHealth.verdict`` or the ``"verdict"`` dict of the JSON and JSONL
outputs): ``status``, ``evidence``, ``summary``, ``reasons`` ``[{"code", "metric", "value", "reference",
"reference_name", "threshold", "direction"}]`` and ``missing`` ``[{"input", "why", "how"}]``. A status this
module does not know is shown as written, in neutral colours.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any, Mapping, Sequence

from .layout import fmt

__all__ = ["EVIDENCE", "STATUS_WORDS", "reason_passes", "status_tone", "verdict_card", "verdict_dict"]

EVIDENCE: tuple[str, ...] = ("codes", "usage", "latents", "labels")
STATUS_WORDS: dict[str, str] = {
    "shrunk": "Shrunk",
    "underused": "Under-used",
    "healthy": "Healthy",
    "cannot_tell": "Cannot tell",
    "uninitialized": "Uninitialized",
    "uninitialised": "Uninitialised",
}
REFERENCE_OF: dict[str, str] = {
    "spread_vs_kmeans": "spread", "rank_vs_kmeans": "effective rank", "coverage_vs_kmeans": "latent coverage",
    "excess_distortion": "held-out distortion",
}
"""What a reason's ``reference`` number is, per metric: the ratios compare with the reference's own value."""
_TONES = {"shrunk": "bad", "underused": "warn", "healthy": "good"}


def status_tone(status: str) -> str:
    """CSS tone of a status: ``good``, ``warn``, ``bad`` or ``neutral`` (unknown and "cannot tell")."""
    return _TONES.get(status, "neutral")


def status_word(status: str) -> str:
    return STATUS_WORDS.get(status, status.replace("_", " ").capitalize() or "Unknown")


def verdict_dict(verdict: Any) -> dict[str, Any] | None:
    """The verdict as the contract's dict, from a ``Verdict``, its dict (JSON, JSONL) or a health with one."""
    if verdict is None:
        return None
    if hasattr(verdict, "num_codes") and hasattr(verdict, "metrics"):  # a CodebookHealth
        verdict = getattr(verdict, "verdict", None)
        if verdict is None:
            return None
    if isinstance(verdict, Mapping):
        return dict(verdict)
    if hasattr(verdict, "to_dict"):
        return dict(verdict.to_dict())
    if dataclasses.is_dataclass(verdict):
        return dataclasses.asdict(verdict)
    raise TypeError(f"verdict: expected a Verdict or its dict, got {type(verdict).__name__}")


def _num(v: Any) -> str:
    return fmt(v, digits=3)


def reason_passes(reason: Mapping[str, Any]) -> bool | None:
    """Whether a measurement is on the good side of its threshold (``direction``: ``min`` = the threshold
    is a minimum, ``max`` = a maximum); None when it cannot be read."""
    v, thr, d = reason.get("value"), reason.get("threshold"), reason.get("direction")
    if not isinstance(v, (int, float)) or not isinstance(thr, (int, float)) or d not in ("min", "max"):
        return None
    return v >= thr if d == "min" else v <= thr


def _reason_item(r: Mapping[str, Any]) -> str:
    ok = reason_passes(r)
    mark = {True: ("good", "&#10003;"), False: ("bad", "&#10007;"), None: ("neutral", "")}[ok]
    need = {"min": "&ge;", "max": "&le;"}.get(str(r.get("direction")), "vs")
    ref = ""
    if r.get("reference_name") not in (None, "", "none"):
        what = REFERENCE_OF.get(str(r.get("metric")), "value")
        value = "" if r.get("reference") is None else f": its {what} = {_num(r.get('reference'))}"
        ref = f"<div class='ref'>against {html.escape(str(r['reference_name']))}{value}</div>"
    return (
        f"<li><code>{html.escape(str(r.get('metric', '?')))}</code> = <b>{_num(r.get('value'))}</b> "
        f"<span class='{mark[0]}'>{mark[1]} (must be {need} {_num(r.get('threshold'))})</span>"
        f"{' <span class=muted>(' + html.escape(str(r['code'])) + ')</span>' if r.get('code') else ''}"
        f"{ref}</li>"
    )


def _evidence(evidence: Sequence[str]) -> str:
    have = set(evidence)
    chips = []
    for k in (*EVIDENCE, *sorted(have - set(EVIDENCE))):
        # usage assigned from the latents is not listed as evidence of its own, but it is there
        implied = k == "usage" and k not in have and "latents" in have
        on = k in have or implied
        label = f"{k} (from latents)" if implied else k
        chips.append(f"<span class='chip {'on' if on else 'off'}' title='{'used' if on else 'not available'}'>"
                     f"{'&#10003;' if on else '&#10007;'} {label}</span>")
    return f"<span class='evidence'>rests on {''.join(chips)}</span>"


def verdict_card(
    name: str,
    verdict: Any,
    *,
    status: str | None = None,
    warnings: Sequence[Mapping[str, str]] = (),
    href: str | None = None,
    caption: str = "",
) -> str:
    """One codebook's verdict as an HTML card.

    Args:
        name: the codebook's name.
        verdict: a ``Verdict``, its dict, or None (a record that carries no verdict: ``status`` and
            ``warnings`` are shown instead).
        status: status shown when ``verdict`` is None.
        warnings: the health record's ``{"code", "message"}`` warnings, listed under the card.
        href: link from the name to the codebook's details section.
        caption: a short line above the name (e.g. "before").
    """
    v = verdict_dict(verdict)
    st = str((v or {}).get("status") or status or "unknown")
    title = f"<a href='{html.escape(href)}'>{html.escape(name)}</a>" if href else html.escape(name)
    parts = [f"<article class='card tone-{status_tone(st)}'>"]
    if caption:
        parts.append(f"<div class='caption'>{html.escape(caption)}</div>")
    parts.append(
        f"<header><span class='badge'>{html.escape(status_word(st))}</span> <code class='name'>{title}"
        f"</code>{_evidence(v.get('evidence') or ()) if v else ''}</header>"
    )
    if v is None:
        parts.append(
            "<p class='muted'>No verdict recorded for this codebook"
            + ("; its warnings follow.</p>" if warnings else ", and no warnings.</p>")
        )
    else:
        parts.append(f"<p class='summary'>{html.escape(str(v.get('summary', '')))}</p>")
        reasons = v.get("reasons") or []
        if reasons:
            parts.append(
                "<div class='label'>Decided by</div><ul class='reasons'>"
                + "".join(_reason_item(r) for r in reasons)
                + "</ul>"
            )
        missing = v.get("missing") or []
        if missing:
            items = "".join(
                f"<li><b>{html.escape(str(m.get('input', '?')))}</b>: {html.escape(str(m.get('why', '')))}"
                f"<div class='how'>How: {html.escape(str(m.get('how', '')))}</div></li>"
                for m in missing
            )
            parts.append(f"<div class='label'>Missing</div><ul class='missing'>{items}</ul>")
    if warnings:
        items = "".join(
            f"<li><b>{html.escape(w.get('code', '?'))}</b>: {html.escape(w.get('message', ''))}</li>"
            for w in warnings
        )
        opened = " open" if v is None else ""
        parts.append(
            f"<details{opened}><summary>{len(warnings)} warning(s)</summary><ul>{items}</ul></details>"
        )
    parts.append("</article>")
    return "".join(parts)
