"""Tiny random-weight models of the real classes, saved like the real ones.

MedGemma 1.5 (Gemma3ForConditionalGeneration + Gemma3Processor), MedSigLIP
(SiglipModel + SiglipProcessor) and the U-Net (segmentation-models-pytorch)
are built with a few thousand parameters, written with ``save_pretrained`` /
``torch.save`` into a directory, and loaded back by the project's own loading
code, exactly as the real weights would be (see ../shared/TINY_MODELS.md).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Sequence

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
           "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
CHARS = list(dict.fromkeys(string.ascii_letters + string.digits + string.punctuation + " \n▁"))

# Gemma 3's chat template, shortened: the system text folds into the first user
# turn, assistant is "model", each image item becomes <start_of_image>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Image geometry of the tiny models: S % P == 0, sqrt(M) divides S / P.
GEMMA_IMAGE, GEMMA_PATCH, GEMMA_TOKENS = 32, 8, 4
SIGLIP_IMAGE, SIGLIP_PATCH = 32, 8


def tokenizer(corpus: Sequence[str] = (), merges: int = 0, **kwargs):
    """Characters and bytes; with a corpus, also up to ``merges`` BPE merges learned from it
    (spaces as ▁, as Gemma's normaliser writes them), so that its texts take few tokens, as
    they do in a real vocabulary."""
    from transformers import GemmaTokenizer

    vocab = {tok: i for i, tok in enumerate(SPECIAL + BYTE_TOKENS)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    learned: list = []
    if corpus and merges:
        from tokenizers import Tokenizer, models, normalizers, trainers

        bpe = Tokenizer(models.BPE())
        bpe.normalizer = normalizers.Replace(" ", "▁")
        bpe.train_from_iterator(list(corpus), trainers.BpeTrainer(
            vocab_size=len(CHARS) + merges, initial_alphabet=CHARS, show_progress=False))
        model = json.loads(bpe.to_str())["model"]
        learned = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]):
            vocab.setdefault(token, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=learned, **kwargs)


def _printable_only(tok) -> list[int]:
    """Token ids random weights must not emit (byte fallback and structure)."""
    ids = [tok.convert_tokens_to_ids(t) for t in BYTE_TOKENS]
    ids += [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<bos>", "<unk>", "<mask>", "<start_of_turn>",
                                                   "<start_of_image>", "<end_of_image>",
                                                   "<image_soft_token>")]
    return ids


def build_medgemma(out_dir: Path | str, seed: int = 0, corpus: Sequence[str] = (), merges: int = 0,
                   embedding_scale: float = 1.0) -> Path:
    """A tiny Gemma3ForConditionalGeneration + Gemma3Processor in out_dir.

    corpus/merges: a vocabulary with BPE merges learned from the corpus (see tokenizer).
    embedding_scale: the tied embeddings multiplied by it; at the default initialisation
    (std 0.02) the logits span about +-1.3, too little for a frozen output layer to learn
    through (the fine-tuning tests train LoRA adapters on this model)."""
    import torch
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor,
                              Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig)

    out = Path(out_dir)
    tok = tokenizer(corpus, merges,
                    extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                          "image_token": "<image_soft_token>"})
    tok.chat_template = CHAT_TEMPLATE
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": GEMMA_IMAGE, "width": GEMMA_IMAGE}),
        tokenizer=tok, chat_template=CHAT_TEMPLATE, image_seq_length=GEMMA_TOKENS)
    ids = tok.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=Gemma3TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=64,
            layer_types=["sliding_attention", "full_attention"], vocab_size=len(tok),
            pad_token_id=ids("<pad>"), bos_token_id=ids("<bos>"), eos_token_id=ids("<eos>")),
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=GEMMA_IMAGE, patch_size=GEMMA_PATCH, vision_use_head=False),
        mm_tokens_per_image=GEMMA_TOKENS, boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"))
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    if embedding_scale != 1.0:
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(embedding_scale)
    gen = model.generation_config
    gen.eos_token_id = [ids("<eos>"), ids("<end_of_turn>")]
    gen.pad_token_id = ids("<pad>")
    gen.bos_token_id = ids("<bos>")
    gen.suppress_tokens = _printable_only(tok)
    gen.do_sample = False
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_lora_adapter(base_dir: Path | str, out_dir: Path | str, seed: int = 1) -> Path:
    """A PEFT LoRA adapter (the RSNA recipe's r=16, alpha=32, q..down projections of the
    language model) with random A and B, so that it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    base = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    peft_model = get_peft_model(base, config)
    with torch.no_grad():  # make the adapter's effect large enough to flip greedy tokens
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20.0)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def build_medsiglip(out_dir: Path | str, seed: int = 0) -> Path:
    """A tiny SiglipModel + SiglipProcessor (byte-fallback Gemma tokenizer as its text tokenizer)."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    out = Path(out_dir)
    tok = tokenizer(add_eos_token=True, model_max_length=16, padding_side="right")
    processor = SiglipProcessor(SiglipImageProcessor(size={"height": SIGLIP_IMAGE, "width": SIGLIP_IMAGE}),
                                tok)
    config = SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, vocab_size=len(tok),
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=SIGLIP_IMAGE, patch_size=SIGLIP_PATCH))
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_unet_checkpoint(path: Path | str, classes=("background", "hemorrhage", "active_extravasation"),
                          context_slices: int = 1, encoder: str = "resnet34", seed: int = 0,
                          drop_decoder: bool = False) -> Path:
    """A random-weight smp U-Net saved as a checkpoint file of the layout the backend reads."""
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(seed)
    model = smp.Unet(encoder, encoder_weights=None, in_channels=2 * context_slices + 1,
                     classes=len(classes))
    state = model.state_dict()
    if drop_decoder:  # the hackathon failure: an encoder alone, the decoder left random
        state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    torch.save({"state_dict": state, "classes": list(classes), "encoder": encoder,
                "in_channels": 2 * context_slices + 1}, path)
    return Path(path)


# --- built once per test process ----------------------------------------------------------

_ROOT: Path | None = None
_BUILT: dict[str, Path] = {}


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        import atexit
        import shutil
        import tempfile

        _ROOT = Path(tempfile.mkdtemp(prefix="tiny-models-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def get(name: str) -> Path:
    """The tiny model called name (medgemma, lora, medsiglip, unet), built on first use."""
    if name not in _BUILT:
        root = _root()
        if name == "medgemma":
            _BUILT[name] = build_medgemma(root / "medgemma")
        elif name == "lora":
            _BUILT[name] = build_lora_adapter(get("medgemma"), root / "lora")
        elif name == "medsiglip":
            _BUILT[name] = build_medsiglip(root / "medsiglip")
        elif name == "unet":
            _BUILT[name] = build_unet_checkpoint(root / "unet.pt")
        else:
            raise KeyError(name)
    return _BUILT[name]


def model_settings(adapter: bool = False, **backends: str):
    """PipelineSettings with the model backends named in backends pointing at the tiny models,
    short generations and few slices (a test's time)."""
    from pipeline import PipelineSettings

    s = PipelineSettings()
    for stage, name in backends.items():
        setattr(s.backends, stage, name)
    m = s.models
    m.device = "cpu"
    if s.backends.triage == "medsiglip":
        m.medsiglip.model = str(get("medsiglip"))
    if "medgemma" in (s.backends.reading, s.backends.report, s.backends.answering):
        m.medgemma.model = str(get("medgemma"))
        m.medgemma.max_new_tokens = 24
        m.medgemma.report_max_new_tokens = 24
        if adapter:
            m.medgemma.adapter = str(get("lora"))
    if s.backends.segmentation == "unet":
        m.unet.checkpoint = str(get("unet"))
        lift_plausibility_limits(s)
    s.triage.max_slices = 6
    return s


def lift_plausibility_limits(s) -> None:
    """A random-weight U-Net draws masks no body could hold, and the pipeline rightly calls
    such a series not assessed and stops before the reading. The tests and the GPU bench
    prove the model stages' code paths and speed, not findings: let every stage run."""
    s.plausibility.max_blood_share_of_body = 1.0
    s.plausibility.max_blood_ml = 1e9
