//! Hot reload: a changed pipeline file takes effect without a restart where that is safe.
//!
//! What selects and shapes traces — each pipeline's `receivers` list, `select` and `stages` —
//! changes in place: the router routes batches accepted from then on by the new rules, and each
//! pipeline task switches stages between two traces, so no trace is half-processed by either
//! version and nothing held in the assembler or the ingest log is touched. Everything that owns
//! sockets, files or held state (receivers, the admin server, a pipeline's queue, log, assembly
//! and MLflow settings, its sinks, the set of pipelines) needs a restart; a file changing any of
//! it is refused as a whole, naming what changed, and the running configuration stays.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::router::{PipelineInput, Router, Routes};
use crate::config::{Config, PipelineConfig};
use crate::stages::StageConfig;

/// A pipeline's stages as its task receives them.
pub type StageConfigs = Arc<Vec<StageConfig>>;

/// The stages of `pipeline`, without their file positions.
pub fn stage_configs(pipeline: &PipelineConfig) -> StageConfigs {
    Arc::new(pipeline.stages.iter().map(|s| s.value.clone()).collect())
}

/// What a reload needs of the running topology.
pub struct Reloader {
    fixed: Fixed,
    inputs: BTreeMap<String, PipelineInput>,
    stages: BTreeMap<String, watch::Sender<StageConfigs>>,
}

impl Reloader {
    /// Remembers what `config` fixed at start.
    pub fn new(
        config: &Config,
        inputs: BTreeMap<String, PipelineInput>,
        stages: BTreeMap<String, watch::Sender<StageConfigs>>,
    ) -> Self {
        Self {
            fixed: fixed_sections(config),
            inputs,
            stages,
        }
    }

    /// Lets go of the pipelines' inputs, so that they close when the router lets go too.
    pub fn close(&mut self) {
        self.inputs.clear();
    }

    /// Applies `config`, or refuses it whole when a section that needs a restart changed.
    ///
    /// # Errors
    ///
    /// Names the sections that changed and need a restart.
    pub fn apply(&mut self, config: &Config, router: &Router) -> Result<(), String> {
        let changed = changed_sections(&self.fixed, &fixed_sections(config));
        if !changed.is_empty() {
            return Err(format!(
                "these changes need a restart: {}; the running configuration stays",
                changed.join(", ")
            ));
        }
        router.replace(Routes::new(config, &self.inputs));
        for (name, pipeline) in &config.pipelines {
            if let Some(tx) = self.stages.get(name) {
                tx.send_replace(stage_configs(pipeline));
            }
        }
        Ok(())
    }
}

/// What needs a restart to change, as comparable text: the top-level sections, and each
/// pipeline's.
struct Fixed {
    top: [(&'static str, String); 3],
    pipelines: BTreeMap<String, [(&'static str, String); 5]>,
}

fn fixed_sections(config: &Config) -> Fixed {
    let top = [
        ("receivers", format!("{:?}", config.receivers)),
        ("admin", format!("{:?}", config.admin)),
        ("shutdown_timeout", format!("{:?}", config.shutdown_timeout)),
    ];
    let pipelines = config
        .pipelines
        .iter()
        .map(|(name, p)| {
            let sections = [
                ("queue", format!("{:?}", p.queue)),
                ("log", format!("{:?}", p.log)),
                ("assemble", format!("{:?}", p.assemble)),
                ("mlflow", format!("{:?}", p.mlflow)),
                ("sinks", format!("{:?}", p.sinks)),
            ];
            (name.clone(), sections)
        })
        .collect();
    Fixed { top, pipelines }
}

/// The paths of the sections that differ, and the pipelines added or removed.
fn changed_sections(old: &Fixed, new: &Fixed) -> Vec<String> {
    let differ = |a: &[(&'static str, String)], b: &[(&'static str, String)]| {
        a.iter()
            .zip(b)
            .filter(|(x, y)| x != y)
            .map(|((section, _), _)| *section)
            .collect::<Vec<_>>()
    };
    let mut changed: Vec<String> = differ(&old.top, &new.top)
        .into_iter()
        .map(String::from)
        .collect();
    for (name, sections) in &old.pipelines {
        match new.pipelines.get(name) {
            Some(now) => changed.extend(
                differ(sections, now)
                    .into_iter()
                    .map(|section| format!("pipelines.{name}.{section}")),
            ),
            None => changed.push(format!("pipeline {name} removed")),
        }
    }
    for name in new.pipelines.keys() {
        if !old.pipelines.contains_key(name) {
            changed.push(format!("pipeline {name} added"));
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(stages: &str, sink_path: &str, extra_pipeline: bool) -> Config {
        let extra = if extra_pipeline {
            "  b:\n    receivers: [otlp]\n    sinks: {d: {type: discard}}\n"
        } else {
            ""
        };
        let text = format!(
            "receivers:\n  otlp:\n    type: otlp\n    grpc: {{endpoint: 127.0.0.1:0}}\npipelines:\n  a:\n    receivers: [otlp]\n    stages: {stages}\n    sinks:\n      out: {{type: debug, path: {sink_path}}}\n{extra}"
        );
        Config::parse(&text, "test.yaml").unwrap()
    }

    #[test]
    fn stages_may_change_but_sinks_and_the_set_of_pipelines_may_not() {
        let base = fixed_sections(&config("[]", "a.jsonl", false));
        let stages = fixed_sections(&config("[{type: enrich, tags: {x: y}}]", "a.jsonl", false));
        assert!(changed_sections(&base, &stages).is_empty());
        let sinks = fixed_sections(&config("[]", "b.jsonl", false));
        assert_eq!(changed_sections(&base, &sinks), ["pipelines.a.sinks"]);
        let added = fixed_sections(&config("[]", "a.jsonl", true));
        assert_eq!(changed_sections(&base, &added), ["pipeline b added"]);
        assert_eq!(changed_sections(&added, &base), ["pipeline b removed"]);
    }
}
