"""Writes this folder's artifacts; run with PYTHONPATH at commit 4f3303e of tfp-coupling."""

import json

import keras
import numpy as np

import tfp_coupling as tc

keras.utils.set_random_seed(3)
x = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 1)).astype("float32")
xv = tc.data.two_moons(4, seed=5)
out = {"x_image": x.tolist(), "x_vector": xv.tolist(), "log_prob": {}}
models = {
    "realnvp_image": tc.realnvp_image_flow([4, 4, 1], num_scales=2, num_couplings_per_scale=1,
                                           num_final_couplings=1, hidden_channels=4,
                                           num_blocks=1),
    "nice_image": tc.nice_image_flow([4, 4, 1], num_couplings=2, hidden_units=[8]),
    "realnvp_whiten": tc.realnvp_flow([2], num_couplings=2, hidden_units=[8]),
}
models["realnvp_image"].compile()
models["realnvp_image"].fit(x, batch_size=3, epochs=1, verbose=0)
models["realnvp_whiten"].compile()
models["realnvp_whiten"].fit(tc.data.two_moons(64, seed=0), batch_size=32, epochs=1, verbose=0)
for k, m in models.items():
    m.save(f"{k}_main.keras")
    out["log_prob"][k] = np.asarray(m.log_prob(x if "image" in k else xv)).tolist()
models["realnvp_whiten"].export("realnvp_whiten_savedmodel")
out["sample_seed7"] = np.asarray(models["realnvp_whiten"].sample(3, 0.5, 7)).tolist()
with open("saved_main.json", "w") as f:
    json.dump(out, f, indent=1)
