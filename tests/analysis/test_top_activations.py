"""Top activating contexts: the kept values are the largest over the data, with their tokens."""
import numpy as np

import kyx
from kyx.analysis import harvest, sites, top_activations


def test_top_values_and_tokens_match_a_direct_scan(lm_workdir):
    loaded = kyx.load(lm_workdir)
    site = "blocks.1.mlp_out"
    batches = list(zip(range(3), harvest.model_batches(loaded, "validation", 4, 32)))
    found = top_activations.top_activations(
        loaded, site, lambda act_nd: act_nd, [0, 5], iter(b for _, b in batches), top=3,
        num_batches=3, context=6, after=2)
    values, tokens = [], []
    for _, batch in batches:
        _, act_btd = sites.run(loaded.model, loaded.params, batch["tokens"],
                               batch["segment_ids"], batch["positions"],
                               site=sites.parse_site(site, loaded.model.cfg))
        keep = batch["segment_ids"] > 0
        values.append(np.asarray(act_btd)[keep])
        tokens.append(batch["tokens"][keep])
    values, tokens = np.concatenate(values), np.concatenate(tokens)
    for latent in (0, 5):
        order = np.argsort(-values[:, latent])[:3]
        got = found[latent]
        np.testing.assert_allclose([c.value for c in got], values[order, latent], atol=1e-5)
        for c, i in zip(got, order):
            assert c.token == loaded.tokenizer.decode([int(tokens[i])]).lstrip() or \
                c.token.strip() == loaded.tokenizer.decode([int(tokens[i])]).strip()
            assert "«" + c.token + "»" in c.render().replace("⏎", "\n")
