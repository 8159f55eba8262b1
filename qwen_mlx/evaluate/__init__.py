"""How much a conversion cost: the exact joint reference/candidate pass (layer by layer, the
vocabulary in slices), its report in quality.json and the card, and the held-out and fit text
(package data under text/). Imports models, system, storage."""
