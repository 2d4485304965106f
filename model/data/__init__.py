"""Training data for latentfuse (MMAIF section 3.1 / 4.1, FusionFM pseudo-labels).

* vocabulary: ``tasks`` (tasks and their degradation sets), ``prompts`` (instructions, ``corpus()``);
* degradation: ``degradations`` (seeded operators), ``depth`` (depth prior / local depth model),
  ``pipeline`` (composition, routing, aspect-ratio crops);
* clean pairs: ``pairs`` (real dataset layouts + validation), ``synth`` (pairs rendered from
  scikit-image photographs), ``samples`` / ``make_samples`` (the shipped demo pairs);
* supervision: ``teachers`` (classical fusion + folder plug-in), ``selection`` (task-aware choice),
  ``refiner`` (Fusion Refiner), ``labels`` (the chain); the pixel operations (colour, filters, pyramids)
  are ``model.image_processing``'s, shared with the runtime;
* output: ``build`` (resumable dataset writer), ``cli`` (``latentfuse data synth|build``).
"""
