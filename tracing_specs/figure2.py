"""The paper's Figure 2: hidden, MLP and attention restorations in both streams at the
first/last subject word and the last word (and the last token on the text side)."""

from lalm_interp.specs import Corrupt, Experiment, Restore

# the paper's corruption: 3σ Gaussian noise on the subject's frames at the encoder's conv2
CORRUPT = Corrupt(at="audio.conv2", span="subject", noise="gaussian", scale=3.0, seed=0)
AUDIO_SPANS = ("first_subject_word", "last_subject_word", "last_word")
TEXT_SPANS = AUDIO_SPANS + ("last_token",)
WINDOW = 10  # layers around each centre; clipped to a shorter stack (ROME), or cap: `trace run --max-window N`

EXPERIMENT = Experiment(
    name="figure2",
    corrupt=CORRUPT,
    restores=(
        Restore(at="audio.layers.*.resid", window=WINDOW, positions=AUDIO_SPANS),
        Restore(at="audio.layers.*.mlp", window=WINDOW, positions=AUDIO_SPANS),
        Restore(at="audio.layers.*.attn", window=WINDOW, positions=AUDIO_SPANS),
        Restore(at="text.layers.*.resid", window=WINDOW, positions=TEXT_SPANS),
        Restore(at="text.layers.*.mlp", window=WINDOW, positions=TEXT_SPANS),
        Restore(at="text.layers.*.attn", window=WINDOW, positions=TEXT_SPANS),
    ),
)
