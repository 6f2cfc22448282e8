//! Shared helpers of the end-to-end tests (control plane, namespaces, node and pod fixtures) land here.
