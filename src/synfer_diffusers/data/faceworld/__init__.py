"""FaceWorld: a procedural face world whose action units, expressions and captions are known exactly.

No real expression dataset and no pretrained generator can be downloaded where this package is developed,
so every claim is measured on this world, the way disentanglement research uses dSprites or CLEVR.

A face is a set of attributes (identity, nuisance, 12 DISFA action-unit intensities in [0, 5]); rendering
is a pure function of them. Each AU moves one local part of the face, graded by its intensity, with cues a
few pixels wide at 64x64 so that they survive a 64 -> 32 autoencoder:

| AU | cue (region) |
|---|---|
| AU1 inner brow raiser | inner brow ends move up (brows) |
| AU2 outer brow raiser | outer brow ends move up (brows) |
| AU4 brow lowerer | brows move down and together, vertical furrows between them (brows) |
| AU5 upper lid raiser | upper lids open wide, white shows above the iris (eyes) |
| AU6 cheek raiser | lower lids push up, cheek contour and blush rise, crow's feet (below the eyes) |
| AU9 nose wrinkler | wrinkles across the nose bridge, nostrils pulled up (nose) |
| AU12 lip corner puller | lip corners up and slightly out (mouth) |
| AU15 lip corner depressor | lip corners down (mouth) |
| AU17 chin raiser | lower lip pushed up and pouted, chin crease and dimpled chin boss (chin) |
| AU20 lip stretcher | mouth stretched wide, lips thinned (mouth) |
| AU25 lips part | lips apart along the whole mouth, teeth show (mouth) |
| AU26 jaw drop | tall oval mouth opening, chin lowered (mouth, chin) |

Labels: an expression is sampled (balanced by default), its AUs are drawn around the EMFACS prototype of
[`expression_prototype`] with intensity jitter, other AUs get small random activations, a fraction of
faces blend two prototypes (the label is the dominant one), and annotator-like noise replaces a fraction
of labels by a random other class. `clean_label` keeps the true class, `label` the annotated one. That is the
`"standard"` regime (`FaceWorldConfig()`); [`FaceWorldConfig.hard`] is a `"hard"` one whose labels go wrong as on
real data (subtle expressions, blends of confusable pairs, confusion-structured noise; `--regime hard`), and
[`faceworld_label_statistics`] measures either.

DISFA-12 lacks AU7, AU16 and AU23, so two prototypes are changed (documented in
[`FACEWORLD_EXTRA_PROTOTYPE_AUS`] and [`FACEWORLD_OPTIONAL_PROTOTYPE_AUS`]): anger also raises the chin
(AU17, standing in for the pressed lips of AU23/AU24), so anger (AU4+AU5+AU17) differs from fear (which adds
AU1, AU2, AU20, AU26), from sad (AU1+AU4+AU15) and from surprise (AU1+AU2+AU5+AU26); happy, surprise and
fear part the lips (AU25) half of the time.

Captions follow FEText: a coarse description from the attributes ("a photo of an elderly woman with grey
curly hair and glasses") enriched by [`~synfer_diffusers.prompts.enrich_prompt`] with the *annotated*
expression and the strongest AUs. Some captions do not mention the expression.

Command line:

```bash
python -m synfer_diffusers.data.faceworld --output-dir runs/faceworld --num-train 20000 --num-test 2000 --seed 0
python -m synfer_diffusers.data.faceworld --output-dir runs/faceworld_hard --regime hard --seed 0  # the hard regime
```

Modules: `config` (constants, [`FaceWorldConfig`] and its regimes), `features` (the dataset features),
`sampling`, `statistics`, `rendering`, `captions`, `dataset` (datasets, parquet splits with a card). Names are
imported lazily: `synfer faceworld --help` reads [`FaceWorldConfig`] without loading torch or datasets.
"""

from ...lazy_imports import lazy_namespace

_import_structure = {
    "captions": ["faceworld_captions"],
    "config": [
        "AGE_GROUPS", "AU_NAMES", "AU_SPACE", "EYE_COLOURS", "FACEWORLD_CONFUSABLE_PAIRS", "FACEWORLD_EXTRA_PROTOTYPE_AUS",
        "FACEWORLD_OPTIONAL_PROTOTYPE_AUS", "FACEWORLD_REGIMES", "GENDERS", "HAIR_COLOURS", "HAIR_STYLES",
        "SUBTLE_PEAK_INTENSITY", "FaceWorldConfig",
    ],
    "dataset": ["SAMPLES_PER_CHUNK", "build_faceworld_dataset", "main", "write_faceworld_splits"],
    "features": ["FACEWORLD_FEATURES"],
    "rendering": ["render_action_units", "render_faces"],
    "sampling": ["faceworld_expression_prototypes", "sample_faceworld_attributes"],
    "statistics": ["faceworld_label_statistics"],
}  # fmt: skip

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _import_structure)
