"""The QEM paper's models (Heap, Bowyer and Aitchison) with their shapes, on synthetic data.

The structure of each follows the paper's experiment code; the data are drawn from the
model itself with fixed seeds (the shapes are what the time depends on):

  bus_breakdown  3 years x 3 boroughs x 30 bus IDs; delay ~ Binomial(131, logits =
                 alpha + phi @ company + psi @ run_type), one-hot company (40 companies)
                 and run type (10 types); alpha per borough, beta and sigma_alpha per year.
  radon          4 states x 150 zip codes (the paper's current code: one reading per zip
                 code); per state a mean, a log scale, a uranium and a basement effect;
                 log radon ~ Normal(mean + basement b + log_u u, exp(log_sigma)).
  occupancy      12 species x 6 years x 200 sites x 5 replicates; a Bernoulli occupancy
                 latent z per site (logits = bird_year_mean * weather * beta); detection
                 y ~ Bernoulli(logits = alpha * quality * z + (1 - z) * -10). The six
                 global hyper-latents (a mean and a log variance for each species-level
                 effect) share one K-dim, as the paper's code groups global latents:
                 apart, they make the species level's factor K^6 x 12 (8.7 billion
                 entries at K=30), which no machine holds. z is enumerated (its two
                 values, exactly: the engine's default for a Bernoulli latent);
                 `occupancy_sampled` draws K particles of z instead, as the paper does.
  covid          92 regions x 109 days (the paper's covid model's shape): per region a
                 random walk of log infections (a time-series latent started at a
                 per-region level) driven by a global growth rate and six intervention
                 effects (an intervention indicator per region and day); daily cases
                 ~ NegativeBinomial(total_count = 10, logits = log infections - log 10).

PAPER_SECONDS holds the paper's time per QEM iteration on an RTX 3090 (figure 3), as
issue 14 quotes them.
"""
from __future__ import annotations

import numpy as np

from engine.model import Model

# seconds per QEM iteration on the paper's RTX 3090, by K (issue 14 gives one radon figure)
PAPER_SECONDS = {"bus_breakdown": {3: 0.039, 10: 0.041, 30: 0.047},
                 "radon": {30: 0.042},
                 "occupancy": {3: 0.050, 10: 0.061, 30: 0.468},
                 "occupancy_sampled": {3: 0.050, 10: 0.061, 30: 0.468},
                 "covid": {3: 0.054, 10: 0.084}}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def bus_breakdown(years: int = 3, boroughs: int = 3, ids: int = 30, companies: int = 40, run_types: int = 10,
                  seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    company = np.eye(companies, dtype=np.float32)[rng.integers(companies, size=(years, boroughs, ids))]
    run_type = np.eye(run_types, dtype=np.float32)[rng.integers(run_types, size=(years, boroughs, ids))]
    phi, psi = rng.normal(size=companies) * 0.5, rng.normal(size=run_types) * 0.5
    alpha = rng.normal(-2.0, 0.5, size=(years, boroughs))
    logits = alpha[:, :, None] + company @ phi + run_type @ psi
    delay = rng.binomial(131, _sigmoid(logits)).astype(np.float32)
    m = Model("paper_bus_breakdown")
    m.add_plate("years", years).add_plate("boroughs", boroughs, parent="years")
    m.add_plate("ids", ids, parent="boroughs")
    m.add_node("log_sigma_phi_psi", "latent", "Normal", {"loc": 0.0, "scale": 1.0})
    m.add_node("psi", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, shape=[run_types])
    m.add_node("phi", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, shape=[companies])
    m.add_node("sigma_beta", "latent", "Normal", {"loc": 0.0, "scale": 1.0})
    m.add_node("mu_beta", "latent", "Normal", {"loc": 0.0, "scale": 1.0})
    m.add_node("beta", "latent", "Normal", {"loc": "mu_beta", "scale": "exp(sigma_beta)"}, plate="years")
    m.add_node("sigma_alpha", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, plate="years")
    m.add_node("alpha", "latent", "Normal", {"loc": "beta", "scale": "exp(sigma_alpha)"}, plate="boroughs")
    m.add_node("delay", "observed", "Binomial",
               {"total_count": 131, "logits": "alpha + phi @ company + psi @ run_type"}, plate="ids")
    m.set_data("company", company, plates=["years", "boroughs", "ids"])
    m.set_data("run_type", run_type, plates=["years", "boroughs", "ids"])
    m.set_data("delay", delay)
    return m


def radon(states: int = 4, zips: int = 150, seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    basement = (rng.random((states, zips)) < 0.6).astype(np.float32)
    log_u = rng.normal(0.0, 0.5, size=(states, zips)).astype(np.float32)
    mean, b, u = rng.normal(1.3, 0.3, states), rng.normal(0.6, 0.2, states), rng.normal(0.7, 0.2, states)
    log_radon = (mean[:, None] + basement * b[:, None] + log_u * u[:, None]
                 + rng.normal(0.0, 0.8, size=(states, zips))).astype(np.float32)
    m = Model("paper_radon")
    m.add_plate("states", states).add_plate("zips", zips, parent="states")
    m.add_node("global_mean", "latent", "Normal", {"loc": 0.0, "scale": 1.0})
    m.add_node("global_log_sigma", "latent", "Normal", {"loc": 0.0, "scale": 1.0})
    m.add_node("state_mean", "latent", "Normal", {"loc": "global_mean", "scale": "exp(global_log_sigma)"},
               plate="states")
    m.add_node("state_log_sigma", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, plate="states")
    m.add_node("beta_u", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, plate="states")
    m.add_node("beta_basement", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, plate="states")
    m.add_node("log_radon", "observed", "Normal",
               {"loc": "state_mean + basement * beta_basement + log_u * beta_u", "scale": "exp(state_log_sigma)"},
               plate="zips")
    m.set_data("basement", basement, plates=["states", "zips"])
    m.set_data("log_u", log_u, plates=["states", "zips"])
    m.set_data("log_radon", log_radon)
    return m


def occupancy(species: int = 12, years: int = 6, sites: int = 200, replicates: int = 5, seed: int = 0,
              enumerate_z: bool = True) -> Model:
    rng = np.random.default_rng(seed)
    weather = rng.normal(size=(species, years, sites)).astype(np.float32)
    quality = rng.normal(size=(species, years, sites)).astype(np.float32)
    bird_mean, beta, alpha = rng.normal(size=species), rng.normal(size=species), rng.normal(size=species)
    bird_year = rng.normal(bird_mean[:, None], 1.0, size=(species, years))
    z = rng.random((species, years, sites)) < _sigmoid(bird_year[:, :, None] * weather * beta[:, None, None])
    logits = np.where(z, alpha[:, None, None] * quality, -10.0)
    y = (rng.random((species, years, sites, replicates)) < _sigmoid(logits)[..., None]).astype(np.float32)
    m = Model("paper_occupancy")
    m.add_plate("species", species).add_plate("years", years, parent="species")
    m.add_plate("sites", sites, parent="years").add_plate("replicates", replicates, parent="sites")
    for g in ("bird_mean", "alpha", "beta"):   # the six global hyper-latents share one K-dim (see above)
        m.add_node(f"{g}_mean", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, group="globals")
        m.add_node(f"{g}_log_var", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, group="globals")
        m.add_node(g, "latent", "Normal", {"loc": f"{g}_mean", "scale": f"exp({g}_log_var)"}, plate="species")
    m.add_node("bird_year_mean", "latent", "Normal", {"loc": "bird_mean", "scale": 1.0}, plate="years")
    m.add_node("z", "latent", "Bernoulli", {"logits": "bird_year_mean * weather * beta"}, plate="sites",
               enumerate=enumerate_z)
    m.add_node("y", "observed", "Bernoulli", {"logits": "alpha * quality * z + (1 - z) * -10"}, plate="replicates")
    m.set_data("weather", weather, plates=["species", "years", "sites"])
    m.set_data("quality", quality, plates=["species", "years", "sites"])
    m.set_data("y", y)
    return m


def occupancy_sampled(**kwargs) -> Model:
    return occupancy(enumerate_z=False, **kwargs)


def covid(regions: int = 92, days: int = 109, interventions: int = 6, seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    start_day = rng.integers(days // 10, days, size=(regions, interventions))   # each intervention stays on once started
    npi = (np.arange(days)[None, :, None] >= start_day[:, None, :]).astype(np.float32)
    effects = rng.normal(0.05, 0.02, interventions)
    log_inf = np.empty((regions, days))
    level = rng.normal(3.0, 1.0, regions)
    for t in range(days):
        level = level + 0.1 - npi[:, t] @ effects + rng.normal(0, 0.05, regions)
        log_inf[:, t] = level
    cases = rng.negative_binomial(10, 10 / (10 + np.exp(np.minimum(log_inf, 12)))).astype(np.float32)
    m = Model("paper_covid")
    m.add_plate("regions", regions).add_plate("days", days, parent="regions")
    m.add_node("growth", "latent", "Normal", {"loc": 0.0, "scale": 0.5}, group="globals")
    m.add_node("effects", "latent", "Normal", {"loc": 0.0, "scale": 0.5}, shape=[interventions], group="globals")
    m.add_node("start", "latent", "Normal", {"loc": 3.0, "scale": 2.0}, plate="regions")
    m.add_node("log_inf", "latent", "Normal", {"loc": "prev + growth - npi @ effects", "scale": 0.1},
               plate="days", timeseries={"init": "start"})
    m.add_node("cases", "observed", "NegativeBinomial", {"total_count": 10, "logits": "log_inf - log(10)"},
               plate="days")
    m.set_data("npi", npi, plates=["regions", "days"])
    m.set_data("cases", cases)
    return m


MODELS = {"bus_breakdown": bus_breakdown, "radon": radon, "occupancy": occupancy,
          "occupancy_sampled": occupancy_sampled, "covid": covid}
