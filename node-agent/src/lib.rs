//! Sonde's node agent. It will watch only its node's ProbeSessions and Pods, resolve pods to cgroup ids, run
//! each session with `sonde_probes::Running` under a local deadline and overhead budget, and upload results
//! (issue 5). Today the same probe path runs through `sonde run` on one machine.
