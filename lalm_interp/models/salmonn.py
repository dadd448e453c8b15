"""A tiny SALMONN-shaped model built from transformers parts, with a processor that works offline.

SALMONN (Tang et al., 2024) is not in transformers. This module reproduces its *module structure*
— the attribute names the ``salmonn`` adapter addresses — and its forward arithmetic, at toy size:

* ``speech_encoder``: a ``WhisperEncoder`` (conv1, conv2, layers, layer_norm), then ``ln_speech``;
* ``beats``: an audio encoder with BEATs' attribute names (``patch_embedding``, ``layer_norm``,
  ``post_extract_proj``, ``encoder.layers`` of Whisper-shaped layers, ``encoder.layer_norm``),
  then ``ln_audio``. Deviation: real BEATs patchifies a 128-bin fbank with a 16x16 ``Conv2d``
  (8 frequency patches per 160 ms, flattened time-major); here ``patch_embedding`` is a
  ``Conv1d`` (kernel 2, stride 2) over the same mel features, time-aligned with Whisper's 50
  frames/s. See ``docs/adapters/salmonn.md``;
* the two streams are padded to the same length and concatenated on channels (as SALMONN does);
* ``speech_Qformer.bert``: a ``Blip2QFormerModel`` run once per window of ``window_frames``
  encoder frames (stride ``stride_frames``; SALMONN: 17 and 17 → 0.34 s, 88 windows for 30 s, the
  last 4 frames dropped) with ``num_query_token`` (1) learned queries ``speech_query_tokens``;
* ``speech_llama_proj``: a Linear to the LLM width;
* ``llama_model``: a ``LlamaForCausalLM`` wrapped in LoRA on ``q_proj``/``v_proj`` — peft's
  ``PeftModel`` when peft is installed, else :class:`MiniLora` with the same module paths
  (``llama_model.base_model.model.model.layers.N.self_attn.q_proj.base_layer``).

The prompt ``USER: <Speech><SpeechHere></Speech> {instr}\\nASSISTANT:`` is spliced by embeddings:
there is no audio placeholder token. :class:`SalmonnProcessor` materialises the sequence as ids
``ids(text before) + ids("<Speech>") + [pad] * n_windows + ids("</Speech>") + ids(text after)`` and
the model overwrites the positions between the two markers with the speech embeddings; the
adapter finds them the same way (:func:`speech_span`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .tiny import DEFAULT_CORPUS
from .tokenizer import train_bpe

SPEECH_HERE = "<SpeechHere>"
SPEECH_OPEN = "<Speech>"
SPEECH_CLOSE = "</Speech>"
PROMPT = "USER: <Speech><SpeechHere></Speech> {instruction}\nASSISTANT:"


@dataclass
class SalmonnConfig:
    """Configuration of a (tiny) SALMONN. Nested configs are Hugging Face configs.

    audio_config: ``WhisperConfig`` of ``speech_encoder`` (``max_source_positions`` = encoder
        frames of the window; mel window = 2x that).
    beats_config: ``WhisperConfig`` giving the width/depth/heads of the BEATs-shaped encoder.
    qformer_config: ``Blip2QFormerConfig`` (``encoder_hidden_size`` = Whisper + BEATs widths).
    text_config: ``LlamaConfig`` of the LLM.
    window_frames / stride_frames: Q-Former window and stride in encoder frames (SALMONN: 17/17).
    num_query_token: queries per window (SALMONN: 1; the adapter requires 1).
    lora_rank / lora_alpha: LoRA on q_proj/v_proj (scaling = alpha / rank).
    speech_open_ids / speech_close_ids: token ids of ``<Speech>`` / ``</Speech>``.
    """

    audio_config: Any
    beats_config: Any
    qformer_config: Any
    text_config: Any
    window_frames: int = 17
    stride_frames: int = 17
    num_query_token: int = 1
    lora_rank: int = 4
    lora_alpha: int = 8
    speech_open_ids: list[int] = field(default_factory=list)
    speech_close_ids: list[int] = field(default_factory=list)
    pad_token_id: int = 0
    model_type: str = "salmonn"

    @property
    def n_windows(self) -> int:
        """Q-Former windows (= LLM audio positions) per example: ``(T - k) // s + 1``."""
        T = int(self.audio_config.max_source_positions)
        return (T - self.window_frames) // self.stride_frames + 1


def speech_span(ids: torch.Tensor, open_ids: Sequence[int], close_ids: Sequence[int]) -> tuple[int, int]:
    """``(start, n)``: the positions between the first ``<Speech>`` marker and the next ``</Speech>``."""
    row = ids.tolist()

    def find(sub: Sequence[int], frm: int) -> int:
        k = len(sub)
        for i in range(frm, len(row) - k + 1):
            if row[i : i + k] == list(sub):
                return i
        return -1

    i = find(open_ids, 0)
    if i < 0 or not open_ids:
        raise ValueError(f"no {SPEECH_OPEN} marker (ids {list(open_ids)}) in the input ids.")
    start = i + len(open_ids)
    j = find(close_ids, start)
    if j < 0 or not close_ids:
        raise ValueError(f"no {SPEECH_CLOSE} marker (ids {list(close_ids)}) after {SPEECH_OPEN}.")
    return start, j - start


# ---------------------------------------------------------------------------------------- parts
class TinyBEATs(nn.Module):
    """BEATs attribute names, Whisper-shaped layers, time-aligned Conv1d patches (see module doc)."""

    def __init__(self, config: Any):
        super().__init__()
        from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

        d = config.d_model
        self.patch_embedding = nn.Conv1d(config.num_mel_bins, d, kernel_size=2, stride=2)
        self.layer_norm = nn.LayerNorm(d)
        self.post_extract_proj = nn.Linear(d, d)
        self.encoder = nn.Module()
        self.encoder.pos = nn.Parameter(0.02 * torch.randn(config.max_source_positions, d))
        self.encoder.layers = nn.ModuleList([WhisperEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.encoder.layer_norm = nn.LayerNorm(d)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(fbank).transpose(1, 2)
        x = self.post_extract_proj(self.layer_norm(x))
        x = x + self.encoder.pos[: x.shape[1]]
        for layer in self.encoder.layers:
            x = layer(x, None)
        return self.encoder.layer_norm(x)


class LoraLinear(nn.Module):
    """``base_layer(x) + scaling * lora_B(lora_A(x))`` with peft's attribute names."""

    def __init__(self, base: nn.Linear, rank: int, alpha: int):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(rank, base.out_features, bias=False)})
        self.scaling = {"default": alpha / rank}

    @property
    def weight(self) -> torch.Tensor:  # like peft: the base weight
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.scaling["default"] * self.lora_B["default"](self.lora_A["default"](x))

    def merge(self) -> None:
        """Fold the LoRA update into ``base_layer.weight`` and zero ``lora_B`` (peft's merge)."""
        with torch.no_grad():
            delta = self.lora_B["default"].weight @ self.lora_A["default"].weight
            self.base_layer.weight += self.scaling["default"] * delta
            self.lora_B["default"].weight.zero_()


class _LoraModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


class MiniLora(nn.Module):
    """Stand-in for ``peft.PeftModel`` (used when peft is not installed): same module paths."""

    def __init__(self, model: nn.Module, rank: int, alpha: int, targets: Sequence[str] = ("q_proj", "v_proj")):
        super().__init__()
        for layer in model.model.layers:
            for name in targets:
                setattr(layer.self_attn, name, LoraLinear(getattr(layer.self_attn, name), rank, alpha))
        self.base_model = _LoraModel(model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.model(*args, **kwargs)


def wrap_lora(llama: nn.Module, rank: int, alpha: int, use_peft: bool | None = None) -> nn.Module:
    """LoRA on q_proj/v_proj: peft when available (or ``use_peft=True``), else :class:`MiniLora`."""
    if use_peft is None:
        try:
            import peft  # noqa: F401

            use_peft = True
        except ImportError:
            use_peft = False
    if use_peft:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, bias="none")
        return get_peft_model(llama, cfg)
    return MiniLora(llama, rank, alpha)


# ---------------------------------------------------------------------------------------- model
class SalmonnForCausalLM(nn.Module):
    """A SALMONN-shaped model. ``forward(input_ids, attention_mask, position_ids, input_features)``
    or ``forward(inputs_embeds=..., ...)`` (merged embeddings, for encoder reuse) → HF LM output."""

    def __init__(self, config: SalmonnConfig, use_peft: bool | None = None):
        super().__init__()
        from transformers import Blip2QFormerModel, LlamaForCausalLM
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if config.num_query_token != 1:
            raise ValueError("this SALMONN model (and its adapter) use one query per window, as SALMONN does.")
        self.config = config
        self.speech_encoder = WhisperEncoder(config.audio_config)
        self.ln_speech = nn.LayerNorm(config.audio_config.d_model)
        self.beats = TinyBEATs(config.beats_config)
        self.ln_audio = nn.LayerNorm(config.beats_config.d_model)
        self.speech_Qformer = nn.Module()
        self.speech_Qformer.bert = Blip2QFormerModel(config.qformer_config)
        dq = config.qformer_config.hidden_size
        self.speech_query_tokens = nn.Parameter(0.02 * torch.randn(1, config.num_query_token, dq))
        self.speech_llama_proj = nn.Linear(dq, config.text_config.hidden_size)
        self.llama_model = wrap_lora(LlamaForCausalLM(config.text_config), config.lora_rank, config.lora_alpha, use_peft)

    @property
    def llama(self) -> nn.Module:
        """The wrapped ``LlamaForCausalLM``."""
        return self.llama_model.base_model.model

    def encode_speech(self, input_features: torch.Tensor) -> torch.Tensor:
        """(B, n_windows, D) speech embeddings, as SALMONN's ``encode_speech``."""
        speech = self.ln_speech(self.speech_encoder(input_features).last_hidden_state)
        audio = self.ln_audio(self.beats(input_features))
        if audio.shape[1] < speech.shape[1]:
            audio = nn.functional.pad(audio, (0, 0, 0, speech.shape[1] - audio.shape[1]))
        elif audio.shape[1] > speech.shape[1]:
            speech = nn.functional.pad(speech, (0, 0, 0, audio.shape[1] - speech.shape[1]))
        x = torch.cat([speech, audio], dim=-1)  # (B, T, C)
        B, T, C = x.shape
        k, s = self.config.window_frames, self.config.stride_frames
        win = nn.functional.unfold(x.transpose(1, 2).unsqueeze(2), kernel_size=(1, k), stride=(1, s))
        L = win.shape[-1]
        win = win.view(B, C, k, L).permute(0, 3, 2, 1).reshape(B * L, k, C)
        query = self.speech_query_tokens.expand(B * L, -1, -1)
        out = self.speech_Qformer.bert(
            query_embeds=query,
            encoder_hidden_states=win,
            encoder_attention_mask=torch.ones(win.shape[:-1], dtype=torch.long, device=win.device),
            return_dict=True,
        ).last_hidden_state
        emb = self.speech_llama_proj(out)
        return emb.view(B, -1, emb.shape[-1])

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, input_features: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if inputs_embeds is None:
            speech = self.encode_speech(input_features) if input_features is not None else None
            inputs_embeds = self.llama.model.embed_tokens(input_ids)
            if speech is not None:
                mask = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
                for b in range(input_ids.shape[0]):
                    start, n = speech_span(input_ids[b], self.config.speech_open_ids, self.config.speech_close_ids)
                    if n != speech.shape[1]:
                        raise ValueError(f"{n} speech positions in the prompt but {speech.shape[1]} windows.")
                    mask[b, start : start + n] = True
                inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), speech.to(inputs_embeds.dtype))
        return self.llama_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                position_ids=position_ids, **kwargs)


# ---------------------------------------------------------------------------------------- processor
class SalmonnProcessor:
    """Mel features padded to the window (Whisper's extractor; the tiny BEATs reads the same
    features) and the prompt's ``<SpeechHere>`` expanded to ``n_windows`` filler positions between
    the ``<Speech>`` / ``</Speech>`` marker ids. Returns ``input_ids``, ``attention_mask``,
    ``input_features`` (left padding)."""

    chat_template = None
    audio_token = SPEECH_HERE

    def __init__(self, feature_extractor: Any, tokenizer: Any, n_windows: int):
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.n_windows = int(n_windows)
        self.open_ids = tokenizer(SPEECH_OPEN, add_special_tokens=False)["input_ids"]
        self.close_ids = tokenizer(SPEECH_CLOSE, add_special_tokens=False)["input_ids"]

    def _ids(self, text: str) -> list[int]:
        if SPEECH_HERE not in text or not text.count(SPEECH_OPEN + SPEECH_HERE + SPEECH_CLOSE) == 1:
            raise ValueError(f"prompt {text!r} must hold '{SPEECH_OPEN}{SPEECH_HERE}{SPEECH_CLOSE}' once.")
        left, right = text.split(SPEECH_OPEN + SPEECH_HERE + SPEECH_CLOSE)
        tok = self.tokenizer
        ids = [tok.bos_token_id] if tok.bos_token_id is not None else []
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        return ids + enc(left) + self.open_ids + [pad] * self.n_windows + self.close_ids + enc(right)

    def __call__(self, text: Sequence[str], audio: Sequence[np.ndarray], sampling_rate: int = 16000,
                 return_tensors: str = "pt", **_: Any) -> dict[str, torch.Tensor]:
        if isinstance(text, str):
            text = [text]
        feats = self.feature_extractor(
            list(audio), sampling_rate=sampling_rate, return_tensors="pt", padding="max_length"
        )["input_features"]
        rows = [self._ids(t) for t in text]
        L = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), L), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for b, r in enumerate(rows):  # left padding
            ids[b, L - len(r) :] = torch.as_tensor(r)
            mask[b, L - len(r) :] = 1
        return {"input_ids": ids, "attention_mask": mask, "input_features": feats}


# ---------------------------------------------------------------------------------------- factory
@dataclass(frozen=True)
class TinySalmonnConfig:
    """Dimensions of a tiny SALMONN.

    whisper_layers / beats_layers / qformer_layers / text_layers: depths.
    d_whisper / d_beats / d_qformer / d_text: widths (ffn 2x). heads: attention heads everywhere.
    window_s: encoder window in seconds (50 encoder frames/s). vocab_size: BPE size.
    lora_rank / lora_alpha: LoRA on q/v. use_peft: ``None`` = peft if installed. seed: weight seed.
    """

    whisper_layers: int = 2
    beats_layers: int = 2
    qformer_layers: int = 2
    text_layers: int = 2
    d_whisper: int = 32
    d_beats: int = 16
    d_qformer: int = 32
    d_text: int = 48
    heads: int = 4
    window_s: int = 4
    vocab_size: int = 400
    lora_rank: int = 4
    lora_alpha: int = 8
    use_peft: bool | None = None
    seed: int = 0


def tiny_salmonn(cfg: TinySalmonnConfig = TinySalmonnConfig(), texts: Iterable[str] | None = None):
    """(model, processor) of a tiny random SALMONN (eval, float32, CPU). LoRA B matrices are random
    (not peft's zeros) so the LoRA path changes the output."""
    from transformers import Blip2QFormerConfig, LlamaConfig, WhisperConfig, WhisperFeatureExtractor

    corpus = list(texts) if texts is not None else [DEFAULT_CORPUS]
    tok = train_bpe(corpus + [PROMPT.format(instruction="Complete the sentence.")], vocab_size=cfg.vocab_size)
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400,
                                 chunk_length=cfg.window_s)
    msp = 50 * cfg.window_s

    def whisper(d: int, layers: int) -> Any:
        return WhisperConfig(d_model=d, encoder_layers=layers, encoder_attention_heads=cfg.heads,
                             encoder_ffn_dim=2 * d, num_mel_bins=128, max_source_positions=msp)

    config = SalmonnConfig(
        audio_config=whisper(cfg.d_whisper, cfg.whisper_layers),
        beats_config=whisper(cfg.d_beats, cfg.beats_layers),
        qformer_config=Blip2QFormerConfig(
            hidden_size=cfg.d_qformer, num_hidden_layers=cfg.qformer_layers, num_attention_heads=cfg.heads,
            intermediate_size=2 * cfg.d_qformer, encoder_hidden_size=cfg.d_whisper + cfg.d_beats,
            cross_attention_frequency=1, vocab_size=8,
        ),
        text_config=LlamaConfig(
            hidden_size=cfg.d_text, num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads,
            num_key_value_heads=max(1, cfg.heads // 2), intermediate_size=2 * cfg.d_text, vocab_size=len(tok),
            max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        pad_token_id=tok.pad_token_id or 0,
    )
    processor = SalmonnProcessor(fe, tok, config.n_windows)
    config.speech_open_ids = list(processor.open_ids)
    config.speech_close_ids = list(processor.close_ids)
    torch.manual_seed(cfg.seed)
    model = SalmonnForCausalLM(config, use_peft=cfg.use_peft)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return model.eval(), processor
