"""MedGemma answering (``[pipeline.backends] answering = "medgemma"``): streamed answers.

The study's Findings (the measured volumes, organs, grades, rules fired, the
reading and its reconciliation, the report) go into the first user turn, the
earlier turns of the conversation follow, then the question; the answer is
streamed piece by piece through ``TextIteratorStreamer``
(:meth:`pipeline.models.medgemma.MedGemma.stream`). The model is the one the
reading and report stages use in this process: the answer waits for the
model's lock, takes it when the first piece is asked for and releases it
when the stream ends or is closed (the client went away). Text only: the Q&A
has the Findings, not the pixels.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from pipeline.answering import Question
from pipeline.backends.medgemma_report import report_facts

SYSTEM = ("You answer a clinician's questions about one abdominal trauma CT study, for research use "
          "only. Use only the study's Findings below; when they do not answer the question, say so "
          "plainly and do not guess. Give volumes in mL as measured. Be brief.")
FOOTER = "\n\n(MedGemma answer from this study's Findings. Research use only: confirm with a radiologist.)"


class MedGemmaAnswerer:
    name = "medgemma"
    version = "1.0"
    uses_images = False
    description = "MedGemma 1.5, streamed, grounded in the study's Findings"

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def messages(self, question: Question) -> list[dict[str, Any]]:
        f = question.findings
        facts = report_facts(f)
        if question.hemodynamic_status:
            facts["hemodynamic_status_for_this_question"] = question.hemodynamic_status
            facts["advice_by_status"] = f.recommendation.branches
        context = (f"Findings of the study:\n{json.dumps(facts, indent=1, default=str)}\n\n"
                   f"Report:\n{f.report.strip()}")
        turns: list[dict[str, Any]] = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": [{"type": "text", "text": context}]},
            {"role": "assistant", "content": [{"type": "text", "text": "I have read the Findings."}]},
        ]
        for turn in question.history:
            turns.append({"role": "user", "content": [{"type": "text", "text": turn.question}]})
            turns.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
        turns.append({"role": "user", "content": [{"type": "text", "text": question.text}]})
        return turns

    def answer(self, question: Question) -> Iterator[str]:
        from pipeline.models.medgemma import medgemma

        models = self.settings.models
        model = medgemma(models)
        adapter = models.medgemma.adapter_in_report and model.adapter is not None
        # model.stream takes the lock on the first next() and releases it when closed.
        yield from model.stream(self.messages(question), (), models.medgemma.report_max_new_tokens,
                                adapter=adapter)
        yield FOOTER

