"""MedGemma report: a narrative briefing written from the Findings.

The measured record comes first, unchanged: the template report (volumes,
grades, decision support, limitations, the research-use statement), so that
no number depends on the language model. MedGemma then writes the briefing
from the same Findings (segmentation volumes, rules fired, the reading and
its reconciliation), with the LoRA adapter on or off as configured
(``adapter_in_report``). If the model runs out of memory, the template alone
is returned and says so.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.backends.template_report import TemplateReport
from pipeline.findings import Findings
from pipeline.settings import PipelineSettings

SYSTEM = ("You are a radiologist writing a short briefing for a trauma team, for a research study. "
          "Use only the facts given; do not invent findings, measurements or grades.")
INSTRUCTIONS = ("Write the briefing in plain text with the headings FINDINGS, IMPRESSION and "
                "RECOMMENDATION, at most 200 words. Give the volumes in mL as measured. Where the image "
                "reading and the segmentation disagree, say so.")


def report_facts(findings: Findings) -> dict[str, Any]:
    """The Findings the model may use, compact."""
    f = findings
    reading = {k: f.reading.get(k) for k in ("injury_pattern", "organs_involved", "bleeding_description",
                                              "severity_estimate", "differential_diagnosis", "source")}
    return {
        "volumes_ml": f.volumes_ml,
        "volumes_by_region_ml": f.volumes_by_region_ml,
        "organs": {name: {"adjacent_blood_ml": o.adjacent_blood_ml,
                          "intraparenchymal_blood_ml": o.intraparenchymal_blood_ml,
                          "blush_inside": o.blush_inside, "blush_outside_adjacent": o.blush_outside_adjacent,
                          "aast_grade_at_least": o.aast_grade}
                   for name, o in f.organs.items() if o.located},
        "risk_tier": f.risk_tier,
        "risk_tier_reasons": f.risk_tier_reasons,
        "hemodynamic_status": f.recommendation.hemodynamic_status,
        "recommendation": f.recommendation.summary,
        "actions": f.recommendation.actions,
        "rules_fired": [r.statement for r in f.recommendation.rules_fired if not r.branch],
        "image_reading": reading,
        "reading_vs_segmentation": (f.reconciliation or {}).get("disagreements", []),
    }


class MedGemmaReport:
    name = "medgemma"
    version = "1.0"
    description = "MedGemma 1.5 narrative briefing over the template report"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def messages(self, findings: Findings) -> list[dict[str, Any]]:
        facts = json.dumps(report_facts(findings), indent=1, default=str)
        return [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                {"role": "user", "content": [{"type": "text", "text": f"Findings:\n{facts}\n\n{INSTRUCTIONS}"}]}]

    def run(self, findings: Findings) -> str:
        from pipeline.models.loading import is_out_of_memory, release_memory
        from pipeline.models.medgemma import medgemma

        s = self.settings.models.medgemma
        model = medgemma(self.settings.models)
        adapter = s.adapter_in_report and model.adapter is not None
        base = TemplateReport(self.settings).run(findings)
        try:
            generation = model.generate(self.messages(findings), (), s.report_max_new_tokens, adapter=adapter)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_out_of_memory(exc):
                raise
            release_memory()
            findings.provenance.notes.append("report: MedGemma ran out of memory; the template report "
                                             "is given alone")
            return base + "\nNARRATIVE BRIEFING\n- Not available: the model ran out of memory.\n"
        header = (f"NARRATIVE BRIEFING (MedGemma: {model.describe()}, adapter "
                  f"{'on' if adapter else 'off'}; language-model text, research use only: check it "
                  f"against the measured findings above)")
        return f"{base}\n{header}\n{generation.text.strip()}\n"
