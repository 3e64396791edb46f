//! `enrich`: adds static tags and metadata to every trace, and copies resource attributes into
//! tags.
//!
//! ```yaml
//! - type: enrich
//!   tags: {team: search}
//!   metadata: {source: traceloom}
//!   resource_tags: {deployment.environment: env}   # resource attribute -> tag
//! ```
//!
//! Values set here replace what the trace had under the same key. Keys under `mlflow.` and
//! `traceloom.` are refused: MLflow and traceloom give them meaning. A resource attribute is
//! taken from the first span group whose resource has it; a trace with none gets no tag.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::AssembledTrace;

/// `type: enrich` settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Tags set on every trace.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Metadata set on every trace.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Resource attribute → tag name.
    #[serde(default)]
    pub resource_tags: BTreeMap<String, String>,
}

impl EnrichConfig {
    /// Problems the types cannot express.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.tags.is_empty() && self.metadata.is_empty() && self.resource_tags.is_empty() {
            problems.push("nothing to add: give tags, metadata or resource_tags".into());
        }
        let keys = self
            .tags
            .keys()
            .map(|k| ("tags", k))
            .chain(self.metadata.keys().map(|k| ("metadata", k)))
            .chain(self.resource_tags.values().map(|k| ("resource_tags", k)));
        for (section, key) in keys {
            if key.starts_with("mlflow.") || key.starts_with("traceloom.") {
                problems.push(format!(
                    "{section}: {key:?} is reserved (mlflow.* and traceloom.* keys have meaning)"
                ));
            }
        }
        problems
    }

    /// Adds the configured keys to `trace`.
    pub fn apply(&self, trace: &mut AssembledTrace) {
        let info = &mut trace.trace.info;
        for (k, v) in &self.tags {
            info.tags.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.metadata {
            info.trace_metadata.insert(k.clone(), v.clone());
        }
        for (attribute, tag) in &self.resource_tags {
            let mut origins = trace.release.groups.iter().map(|g| &g.origin);
            if let Some(value) = origins.find_map(|o| o.resource_str(attribute)) {
                info.tags.insert(tag.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests::{assembled, span};

    fn enrich(yaml: &str) -> EnrichConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn static_keys_and_resource_attributes_become_tags() {
        let mut t = assembled(vec![span("a", 0, None)]);
        t.trace.info.tags.insert("team".into(), "old".into());
        enrich("tags: {team: search, 環境: 本番}\nmetadata: {source: tl}\nresource_tags: {service.name: svc, absent.attr: never}")
            .apply(&mut t);
        let info = &t.trace.info;
        assert_eq!(info.tags["team"], "search", "configured values replace");
        assert_eq!(info.tags["環境"], "本番");
        assert_eq!(info.tags["svc"], "test-service");
        assert!(
            !info.tags.contains_key("never"),
            "a missing attribute adds nothing"
        );
        assert_eq!(info.trace_metadata["source"], "tl");
    }

    #[test]
    fn an_empty_trace_gets_static_keys_only() {
        let mut t = assembled(vec![]);
        enrich("tags: {a: b}\nresource_tags: {service.name: svc}").apply(&mut t);
        assert_eq!(t.trace.info.tags["a"], "b");
        assert!(!t.trace.info.tags.contains_key("svc"));
    }

    #[test]
    fn reserved_and_empty_settings_are_refused() {
        assert!(enrich("tags: {mlflow.user: x}").problems()[0].contains("reserved"));
        assert!(enrich("resource_tags: {a: traceloom.x}").problems()[0].contains("reserved"));
        assert!(enrich("{}").problems()[0].contains("nothing to add"));
    }
}
