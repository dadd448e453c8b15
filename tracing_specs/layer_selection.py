"""The layer-selection study (the paper's Table 2): trace MLP outputs in both streams at each word
position, then pick the top-1/2/3 AIE layers per word position for the editors.

    lalm-interp trace run tracing_specs/layer_selection.py --bench B --out T
    python -c "import xarray as xr; from lalm_interp.tracing.select import selection_table; \\
               print(selection_table(xr.load_dataset('T/aie.nc'), 'audio.mlp', ['first_subject_word', 'last_subject_word']))"
"""

from lalm_interp.specs import Corrupt, Experiment, Restore

# the paper's corruption: 3σ Gaussian noise on the subject's frames at the encoder's conv2
CORRUPT = Corrupt(at="audio.conv2", span="subject", noise="gaussian", scale=3.0, seed=0)
AUDIO_SPANS = ("first_subject_word", "last_subject_word", "last_word")
TEXT_SPANS = AUDIO_SPANS + ("last_token",)
WINDOW = 10  # layers around each centre; clipped to a shorter stack (ROME), or cap: `trace run --max-window N`

EXPERIMENT = Experiment(
    name="layer_selection",
    corrupt=CORRUPT,
    restores=(
        Restore(at="audio.layers.*.mlp", window=WINDOW, positions=AUDIO_SPANS),
        Restore(at="text.layers.*.mlp", window=WINDOW, positions=TEXT_SPANS),
    ),
)

# what the Table-2 harness selects from the result: family -> word positions, and k values
SELECT = {
    "audio.mlp": ("first_subject_word", "last_subject_word"),
    "text.mlp": ("first_subject_word", "last_subject_word", "last_token"),
}
TOP_K = (1, 2, 3)
