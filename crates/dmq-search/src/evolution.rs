//! The evolutionary search (docs/algorithms.md §4.5): memoised, seedable, resumable, with
//! candidates evaluated in batches by an [`Evaluator`] (threads here; the trait takes a whole
//! batch so an implementation can spread it over devices or machines).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::candidate::{Candidate, SearchSpace};
use crate::cost::{Budget, CostModel};
use crate::error::{Result, SearchError};
use crate::rng::SearchRng;

/// Options of the search; defaults are the reference scripts' (P = 50, top-k 10, 25
/// mutations, 10 crossovers, m_prob 0.25, 0.1 for the initial mutations of x0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvolutionConfig {
    /// Population size P.
    pub population: usize,
    /// Parents kept per epoch.
    pub top_k: usize,
    /// Mutations per epoch.
    pub mutations: usize,
    /// Crossovers per epoch.
    pub crossovers: usize,
    /// Mutation probability per gene.
    pub m_prob: f64,
    /// Mutation probability of the initial mutations of x0.
    pub init_m_prob: f64,
    /// Epochs after the initial population.
    pub epochs: usize,
    /// Bit index of every gene of the starting point x0.
    pub x0_index: u8,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for EvolutionConfig {
    fn default() -> Self {
        Self {
            population: 50,
            top_k: 10,
            mutations: 25,
            crossovers: 10,
            m_prob: 0.25,
            init_m_prob: 0.1,
            epochs: 15,
            x0_index: 0,
            seed: 0,
        }
    }
}

impl EvolutionConfig {
    fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(SearchError::Option(s));
        if self.population < 2 || self.top_k == 0 || self.top_k > self.population {
            return bad(format!(
                "population {} and top-k {} (need P ≥ 2, 1 ≤ k ≤ P)",
                self.population, self.top_k
            ));
        }
        if self.mutations + self.crossovers > self.population {
            return bad(format!(
                "{} mutations + {} crossovers exceed the population {}",
                self.mutations, self.crossovers, self.population
            ));
        }
        for (name, p) in [("m_prob", self.m_prob), ("init_m_prob", self.init_m_prob)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} = {p} outside [0, 1]"));
            }
        }
        Ok(())
    }
}

/// Scores batches of candidates; lower is better (FD, or a proxy).
pub trait Evaluator {
    /// One fitness per candidate, in order.
    fn evaluate(&self, batch: &[Candidate]) -> Vec<Result<f64>>;
}

/// Evaluates a batch on up to `threads` threads with a thread-safe fitness function.
pub struct ThreadEvaluator<F> {
    f: F,
    threads: usize,
}

impl<F: Fn(&Candidate) -> Result<f64> + Sync> ThreadEvaluator<F> {
    /// `f` on `threads` threads (1 = sequential).
    pub fn new(f: F, threads: usize) -> Self {
        Self {
            f,
            threads: threads.max(1),
        }
    }
}

impl<F: Fn(&Candidate) -> Result<f64> + Sync> Evaluator for ThreadEvaluator<F> {
    fn evaluate(&self, batch: &[Candidate]) -> Vec<Result<f64>> {
        if self.threads == 1 || batch.len() < 2 {
            return batch.iter().map(&self.f).collect();
        }
        let per = batch.len().div_ceil(self.threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .chunks(per)
                .map(|chunk| s.spawn(move || chunk.iter().map(&self.f).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }
}

/// An evaluated candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The candidate.
    pub candidate: Candidate,
    /// Its fitness (lower is better).
    pub fitness: f64,
    /// Its BitOPs per image.
    pub bitops: f64,
}

/// One epoch's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (0 = the initial population).
    pub epoch: usize,
    /// Best fitness so far.
    pub best_fitness: f64,
    /// BitOPs of the best candidate.
    pub best_bitops: f64,
    /// Candidates evaluated so far.
    pub evaluated: usize,
}

/// Everything needed to resume: the memo, the generator and the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    /// Epochs finished (0 = only the initial population).
    pub epochs_done: usize,
    /// Whether the initial population is evaluated.
    pub initialised: bool,
    /// The generator.
    pub rng: SearchRng,
    /// Every evaluated candidate (the memo).
    pub scored: Vec<Scored>,
    /// One record per finished epoch.
    pub history: Vec<EpochRecord>,
    /// What the state belongs to (space, budget, config): a resume checks it.
    pub fingerprint: String,
}

/// The evolutionary search over a space under a budget.
pub struct Evolution<'a> {
    space: &'a SearchSpace,
    cost: &'a CostModel,
    budget: Budget,
    config: EvolutionConfig,
    checkpoint: Option<PathBuf>,
}

impl<'a> Evolution<'a> {
    /// A search of `space` with `cost` under `budget`.
    pub fn new(
        space: &'a SearchSpace,
        cost: &'a CostModel,
        budget: Budget,
        config: EvolutionConfig,
    ) -> Result<Self> {
        config.validate()?;
        if config.x0_index as usize >= space.bit_options.len() {
            return Err(SearchError::Option(format!(
                "x0 bit index {} with {} bit options",
                config.x0_index,
                space.bit_options.len()
            )));
        }
        Ok(Self {
            space,
            cost,
            budget,
            config,
            checkpoint: None,
        })
    }

    /// Saves the state to `path` after the initial population and after every epoch, and
    /// resumes from it when it exists.
    pub fn with_checkpoint(mut self, path: impl AsRef<Path>) -> Self {
        self.checkpoint = Some(path.as_ref().to_path_buf());
        self
    }

    /// What defines the search; [`same_search`] compares it without `epochs`, so a finished
    /// search can be extended by resuming it with more epochs.
    fn fingerprint(&self) -> String {
        serde_json::json!({
            "space": self.space, "budget": self.budget.max_bitops, "config": self.config
        })
        .to_string()
    }

    fn load(&self) -> Result<Option<SearchState>> {
        let Some(path) = &self.checkpoint else {
            return Ok(None);
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(SearchError::Checkpoint {
                    path: path.clone(),
                    reason: e.to_string(),
                });
            }
        };
        let state: SearchState =
            serde_json::from_slice(&bytes).map_err(|e| SearchError::Checkpoint {
                path: path.clone(),
                reason: format!("not a search state: {e}"),
            })?;
        if !same_search(&state.fingerprint, &self.fingerprint()) {
            return Err(SearchError::Checkpoint {
                path: path.clone(),
                reason: "it belongs to another search (space, budget or options differ); \
                         delete it or pick another path"
                    .into(),
            });
        }
        self.check_state(&state)
            .map_err(|reason| SearchError::Checkpoint {
                path: path.clone(),
                reason,
            })?;
        Ok(Some(state))
    }

    /// Checks a loaded state's contents against the search before anything indexes them:
    /// an initialised state has scored candidates, every candidate lies in the space, and
    /// every fitness and BitOPs value is finite. The error names the field.
    fn check_state(&self, state: &SearchState) -> std::result::Result<(), String> {
        if state.initialised && state.scored.is_empty() {
            return Err(
                "field 'scored': empty, but 'initialised' is true (the initial population \
                 is always scored)"
                    .into(),
            );
        }
        if !state.initialised && state.epochs_done > 0 {
            return Err(format!(
                "field 'epochs_done': {} epochs done, but 'initialised' is false",
                state.epochs_done
            ));
        }
        for (i, s) in state.scored.iter().enumerate() {
            self.space
                .check(&s.candidate)
                .map_err(|e| format!("field 'scored[{i}].candidate': {e}"))?;
            if !s.fitness.is_finite() {
                return Err(format!(
                    "field 'scored[{i}].fitness': non-finite {}",
                    s.fitness
                ));
            }
            if !(s.bitops.is_finite() && s.bitops >= 0.0) {
                return Err(format!(
                    "field 'scored[{i}].bitops': {} is not a finite count",
                    s.bitops
                ));
            }
        }
        Ok(())
    }

    fn save(&self, state: &SearchState) -> Result<()> {
        let Some(path) = &self.checkpoint else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(state).map_err(|e| SearchError::Checkpoint {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        dmq_quant::file::write_atomic(path, &bytes).map_err(|e| SearchError::Checkpoint {
            path: path.clone(),
            reason: e.to_string(),
        })
    }

    /// Runs (or resumes) the search; `progress` is called after every epoch.
    ///
    /// # Errors
    /// A failing fitness evaluation, an unreadable or foreign checkpoint, or an x0 over
    /// budget.
    pub fn run(
        &self,
        evaluator: &dyn Evaluator,
        progress: &mut dyn FnMut(&EpochRecord),
    ) -> Result<SearchResult> {
        let mut state = self.load()?.unwrap_or_else(|| SearchState {
            epochs_done: 0,
            initialised: false,
            rng: SearchRng::new(self.config.seed),
            scored: Vec::new(),
            history: Vec::new(),
            fingerprint: self.fingerprint(),
        });
        let mut memo: BTreeMap<Candidate, usize> = state
            .scored
            .iter()
            .enumerate()
            .map(|(i, s)| (s.candidate.clone(), i))
            .collect();
        let cfg = &self.config;
        if !state.initialised {
            let x0 = self.space.uniform(cfg.x0_index)?;
            if !self.budget.allows(self.cost, self.space, &x0) {
                return Err(SearchError::Option(format!(
                    "the starting point (all genes at {} bits) needs {:.3e} BitOPs, over the budget {:.3e}",
                    self.space.bit_options[cfg.x0_index as usize],
                    self.cost.bitops(self.space, &x0),
                    self.budget.max_bitops
                )));
            }
            let mut batch = vec![x0.clone()];
            // x0, P/2 random candidates, then mutations of x0 up to P.
            let mut rng = state.rng.clone();
            self.fill(
                &mut batch,
                &memo,
                1 + cfg.population / 2,
                &mut rng,
                |s, r| s.random(r),
            );
            self.fill(&mut batch, &memo, cfg.population, &mut rng, |s, r| {
                s.mutate(&x0, cfg.init_m_prob, r)
            });
            state.rng = rng;
            self.score(&mut state, &mut memo, batch, evaluator)?;
            state.initialised = true;
            let rec = self.record(&state, 0);
            state.history.push(rec.clone());
            self.save(&state)?;
            progress(&rec);
        }
        while state.epochs_done < cfg.epochs {
            let mut rng = state.rng.clone();
            let parents = self.top(&state, cfg.top_k);
            let mut batch = Vec::new();
            self.fill(&mut batch, &memo, cfg.mutations, &mut rng, |s, r| {
                let p = &parents[r.below(parents.len())];
                s.mutate(p, cfg.m_prob, r)
            });
            let n = batch.len() + cfg.crossovers;
            self.fill(&mut batch, &memo, n, &mut rng, |s, r| {
                let a = &parents[r.below(parents.len())];
                let b = &parents[r.below(parents.len())];
                s.crossover(a, b, r)
            });
            self.fill(&mut batch, &memo, cfg.population, &mut rng, |s, r| {
                s.random(r)
            });
            state.rng = rng;
            self.score(&mut state, &mut memo, batch, evaluator)?;
            state.epochs_done += 1;
            let rec = self.record(&state, state.epochs_done);
            state.history.push(rec.clone());
            self.save(&state)?;
            progress(&rec);
        }
        let mut ranked = state.scored.clone();
        ranked.sort_by(|a, b| a.fitness.total_cmp(&b.fitness));
        Ok(SearchResult {
            best: ranked[0].clone(),
            ranked,
            history: state.history,
        })
    }

    /// Adds legal, unseen, distinct candidates from `make` until `batch` holds `want`
    /// (or 100 tries per missing candidate fail: a small space may run out).
    fn fill(
        &self,
        batch: &mut Vec<Candidate>,
        memo: &BTreeMap<Candidate, usize>,
        want: usize,
        rng: &mut SearchRng,
        mut make: impl FnMut(&SearchSpace, &mut SearchRng) -> Candidate,
    ) {
        let mut tries = 100 * want.saturating_sub(batch.len()).max(1);
        while batch.len() < want && tries > 0 {
            tries -= 1;
            let c = make(self.space, rng);
            if memo.contains_key(&c)
                || batch.contains(&c)
                || !self.budget.allows(self.cost, self.space, &c)
            {
                continue;
            }
            batch.push(c);
        }
    }

    fn score(
        &self,
        state: &mut SearchState,
        memo: &mut BTreeMap<Candidate, usize>,
        batch: Vec<Candidate>,
        evaluator: &dyn Evaluator,
    ) -> Result<()> {
        let results = evaluator.evaluate(&batch);
        if results.len() != batch.len() {
            return Err(SearchError::Fitness(format!(
                "the evaluator returned {} results for {} candidates",
                results.len(),
                batch.len()
            )));
        }
        for (c, r) in batch.into_iter().zip(results) {
            let fitness = r?;
            if !fitness.is_finite() {
                return Err(SearchError::Fitness(format!(
                    "non-finite fitness {fitness} for timesteps {:?}",
                    c.timesteps
                )));
            }
            memo.insert(c.clone(), state.scored.len());
            state.scored.push(Scored {
                bitops: self.cost.bitops(self.space, &c),
                candidate: c,
                fitness,
            });
        }
        Ok(())
    }

    fn top(&self, state: &SearchState, k: usize) -> Vec<Candidate> {
        let mut s: Vec<&Scored> = state.scored.iter().collect();
        s.sort_by(|a, b| a.fitness.total_cmp(&b.fitness));
        s.into_iter().take(k).map(|s| s.candidate.clone()).collect()
    }

    fn record(&self, state: &SearchState, epoch: usize) -> EpochRecord {
        let best = state
            .scored
            .iter()
            .min_by(|a, b| a.fitness.total_cmp(&b.fitness))
            .expect("the initial population is not empty");
        EpochRecord {
            epoch,
            best_fitness: best.fitness,
            best_bitops: best.bitops,
            evaluated: state.scored.len(),
        }
    }
}

/// The outcome of a search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// The best candidate.
    pub best: Scored,
    /// Every evaluated candidate, best first.
    pub ranked: Vec<Scored>,
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
}

impl SearchResult {
    /// The Pareto front of BitOPs against fitness (both lower-better), ascending in BitOPs.
    pub fn pareto_front(&self) -> Vec<Scored> {
        pareto_front(&self.ranked)
    }
}

/// The points of `scored` that no other point beats on both BitOPs and fitness, sorted by
/// BitOPs.
pub fn pareto_front(scored: &[Scored]) -> Vec<Scored> {
    let mut s: Vec<&Scored> = scored.iter().collect();
    s.sort_by(|a, b| {
        a.bitops
            .total_cmp(&b.bitops)
            .then(a.fitness.total_cmp(&b.fitness))
    });
    let mut front: Vec<Scored> = Vec::new();
    let mut best = f64::INFINITY;
    for p in s {
        if p.fitness < best {
            best = p.fitness;
            front.push(p.clone());
        }
    }
    front
}

/// Whether two fingerprints describe the same search: equal as JSON values once
/// `config.epochs` is left out.
fn same_search(stored: &str, current: &str) -> bool {
    let parse = |s: &str| -> Option<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_str(s).ok()?;
        if let Some(c) = v.get_mut("config").and_then(|c| c.as_object_mut()) {
            c.remove("epochs");
        }
        Some(v)
    };
    matches!((parse(stored), parse(current)), (Some(a), Some(b)) if a == b)
}
