//! The cluster admin's tenancy settings that both the operator and the node agents apply.

use std::collections::BTreeSet;

/// `Scheduled`/`Attached`/`Failed` reason of a trace whose target is a whole node in a namespace not allowed to.
pub const NODE_WIDE_NOT_ALLOWED: &str = "NodeWideNotAllowed";

/// The namespaces whose TraceJobs and ProbePolicies may target whole nodes (no `podSelector`: every process on
/// the node, other tenants' pods and the host included). Set by the cluster admin (chart value
/// `tenancy.nodeWideNamespaces`, given to the operator and the agents); empty by default, `*` for all.
#[derive(Clone, Debug, Default)]
pub struct NodeWide {
    namespaces: BTreeSet<String>,
}

impl NodeWide {
    /// A comma-separated list of namespaces, or `*`.
    pub fn parse(list: &str) -> NodeWide {
        let namespaces = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        NodeWide { namespaces }
    }

    pub fn allows(&self, ns: &str) -> bool {
        self.namespaces.contains("*") || self.namespaces.contains(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_listed_or_starred() {
        let some = NodeWide::parse(" kube-system, ops ,");
        assert!(some.allows("ops") && some.allows("kube-system") && !some.allows("team-a"));
        assert!(NodeWide::parse("*").allows("team-a"));
        assert!(!NodeWide::parse("").allows("default"));
    }
}
