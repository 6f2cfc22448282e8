//! Sonde's operator. It will reconcile TraceJobs and ProbePolicies into per-node ProbeSessions (owned, so the
//! garbage collector cleans up), roll their statuses up, emit Events and serve results over REST (issue 5).
