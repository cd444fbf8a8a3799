//! Runs a DAG of jobs on a bounded pool of workers.
//!
//! A node is handed to a worker only once every node it depends on has
//! finished, so no worker ever waits on another node: with one worker the
//! graph runs in dependency order, with N up to N independent nodes run at
//! once. A node whose dependency failed does not run; its outcome is a
//! [`NodeError::Dependency`] whose source is the dependency's error, so the
//! cause chain is kept as typed errors, not flattened into strings. The
//! scheduler knows nothing of what a node does.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};

/// The nodes to run and what each depends on.
pub struct Graph<'a> {
    /// The nodes to run (indices into `deps`), in a preferred order: when
    /// several are ready, the earliest goes first.
    pub nodes: &'a [usize],
    /// For every node index, the nodes it depends on.
    pub deps: &'a [BTreeSet<usize>],
    /// How errors name a node (a stage's label).
    pub names: &'a [String],
}

/// Why a node has no result.
#[derive(Debug)]
pub enum NodeError {
    /// The node ran and failed.
    Failed(anyhow::Error),
    /// A node it depends on has no result.
    Dependency {
        name: String,
        source: Arc<NodeError>,
    },
    /// It depends on a node that is not in the graph to run, or on itself
    /// through a cycle: it can never start.
    Unreachable { name: String, dep: String },
}

impl NodeError {
    /// The error at the end of the cause chain.
    pub fn root(&self) -> &NodeError {
        match self {
            NodeError::Dependency { source, .. } => source.root(),
            other => other,
        }
    }
}

impl NodeError {
    /// What a user is shown: the failing node's error with its causes on
    /// one line (`{:#}`), as the build always printed it.
    pub fn message(&self) -> String {
        match self.root() {
            // A located failure's message holds its causes already (its
            // `cause` is kept for callers that look into it, not to be
            // printed a second time).
            NodeError::Failed(e)
                if (&**e as &(dyn std::error::Error + 'static)).is::<crate::error::Failure>() =>
            {
                e.to_string()
            }
            NodeError::Failed(e) => format!("{e:#}"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Its causes follow as sources (see [`NodeError::message`]).
            NodeError::Failed(e) => write!(f, "{e}"),
            NodeError::Dependency { name, .. } => {
                write!(f, "{name} did not run: a stage it needs failed")
            }
            NodeError::Unreachable { name, dep } => write!(
                f,
                "{name} needs {dep}, which is not built before it (a cycle, or a stage outside the build)"
            ),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Failed(e) => e.source(),
            NodeError::Dependency { source, .. } => Some(source.as_ref()),
            NodeError::Unreachable { .. } => None,
        }
    }
}

pub type Outcome<T> = Result<Arc<T>, Arc<NodeError>>;

/// A shared [`NodeError`] as an error of its own (for `anyhow` and
/// [`crate::error::Failure`] causes).
#[derive(Debug, Clone)]
pub struct SharedError(pub Arc<NodeError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.0.as_ref())
    }
}

/// Every node's outcome, readable while the graph runs (a node reads its
/// dependencies' results here).
pub struct Outcomes<T> {
    slots: Mutex<Vec<Option<Outcome<T>>>>,
}

impl<T> Outcomes<T> {
    pub fn new(n: usize) -> Outcomes<T> {
        Outcomes {
            slots: Mutex::new((0..n).map(|_| None).collect()),
        }
    }

    /// The outcome of node `i`, if it has finished.
    pub fn get(&self, i: usize) -> Option<Outcome<T>> {
        self.slots
            .lock()
            .expect("outcomes")
            .get(i)
            .cloned()
            .flatten()
    }

    fn set(&self, i: usize, o: Outcome<T>) {
        self.slots.lock().expect("outcomes")[i] = Some(o);
    }
}

struct State {
    ready: VecDeque<usize>,
    /// Per node: dependencies not finished yet.
    waiting: Vec<usize>,
    /// Nodes not finished yet.
    left: usize,
    /// Nodes a worker is running now.
    running: usize,
}

/// Runs every node of `graph` on at most `workers` threads, storing each
/// outcome in `outcomes` as soon as it is known.
pub fn run<T, F>(graph: &Graph, workers: usize, outcomes: &Outcomes<T>, job: F)
where
    T: Send + Sync,
    F: Fn(usize) -> anyhow::Result<T> + Sync,
{
    let in_graph: BTreeSet<usize> = graph.nodes.iter().copied().collect();
    let mut waiting = vec![0; graph.deps.len()];
    let mut ready = VecDeque::new();
    let mut left = 0;
    for &n in graph.nodes {
        if let Some(d) = graph.deps[n]
            .iter()
            .find(|d| !in_graph.contains(d) || **d == n)
        {
            outcomes.set(n, Err(Arc::new(unreachable(graph, n, *d))));
            continue;
        }
        waiting[n] = graph.deps[n].len();
        left += 1;
        if waiting[n] == 0 {
            ready.push_back(n);
        }
    }
    let state = Mutex::new(State {
        ready,
        waiting,
        left,
        running: 0,
    });
    let wake = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| worker(graph, &state, &wake, outcomes, &job));
        }
    });
    // What never became ready (a cycle) can never run.
    for &n in graph.nodes {
        if outcomes.get(n).is_none() {
            let dep = graph.deps[n]
                .iter()
                .find(|d| outcomes.get(**d).is_none())
                .copied()
                .unwrap_or(n);
            outcomes.set(n, Err(Arc::new(unreachable(graph, n, dep))));
        }
    }
}

/// `job(n)`, with a panic turned into the node's error: a worker that
/// unwound would leave the others waiting on it forever (the build would
/// hang instead of failing).
fn run_job<T, F>(job: &F, n: usize, name: &str) -> anyhow::Result<T>
where
    F: Fn(usize) -> anyhow::Result<T> + Sync,
{
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(n))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            Err(anyhow::anyhow!(
                "internal error: stage {name} panicked ({what}); this is a bug in kiln, please report it"
            ))
        }
    }
}

fn unreachable(graph: &Graph, n: usize, dep: usize) -> NodeError {
    NodeError::Unreachable {
        name: graph.names[n].clone(),
        dep: graph.names[dep].clone(),
    }
}

fn worker<T, F>(
    graph: &Graph,
    state: &Mutex<State>,
    wake: &Condvar,
    outcomes: &Outcomes<T>,
    job: &F,
) where
    T: Send + Sync,
    F: Fn(usize) -> anyhow::Result<T> + Sync,
{
    loop {
        let n = {
            let mut st = state.lock().expect("scheduler");
            loop {
                if let Some(n) = st.ready.pop_front() {
                    st.running += 1;
                    break n;
                }
                // Done, or stuck: nothing runs that could make a node ready.
                if st.left == 0 || st.running == 0 {
                    wake.notify_all();
                    return;
                }
                st = wake.wait(st).expect("scheduler");
            }
        };
        let failed_dep = graph.deps[n]
            .iter()
            .find_map(|d| outcomes.get(*d).and_then(|o| o.err()));
        let outcome = match failed_dep {
            Some(source) => Err(Arc::new(NodeError::Dependency {
                name: graph.names[n].clone(),
                source,
            })),
            None => run_job(job, n, &graph.names[n])
                .map(Arc::new)
                .map_err(|e| Arc::new(NodeError::Failed(e))),
        };
        outcomes.set(n, outcome);
        let mut st = state.lock().expect("scheduler");
        st.left -= 1;
        st.running -= 1;
        for &m in graph.nodes {
            if graph.deps[m].contains(&n) {
                st.waiting[m] -= 1;
                if st.waiting[m] == 0 {
                    st.ready.push_back(m);
                }
            }
        }
        wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_job_fails_its_node_and_its_dependents_without_a_hang() {
        let deps = deps(&[&[], &[0], &[]]);
        let names = names(3);
        let graph = Graph {
            nodes: &[0, 1, 2],
            deps: &deps,
            names: &names,
        };
        let outcomes = Outcomes::new(3);
        run(&graph, 2, &outcomes, |n| {
            if n == 0 {
                panic!("boom in {n}");
            }
            Ok(n)
        });
        let e = outcomes.get(0).unwrap().unwrap_err();
        assert!(
            e.message().contains("stage-0 panicked (boom in 0)"),
            "{}",
            e.message()
        );
        assert!(outcomes.get(1).unwrap().is_err(), "its dependent fails too");
        assert_eq!(*outcomes.get(2).unwrap().unwrap(), 2, "the others run");
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("stage-{i}")).collect()
    }

    fn deps(d: &[&[usize]]) -> Vec<BTreeSet<usize>> {
        d.iter().map(|x| x.iter().copied().collect()).collect()
    }

    /// Runs a graph whose jobs log their start and end, each taking a
    /// little while so that overlaps show.
    fn trace(d: &[&[usize]], nodes: &[usize], workers: usize) -> (Vec<String>, usize) {
        let deps = deps(d);
        let names = names(deps.len());
        let graph = Graph {
            nodes,
            deps: &deps,
            names: &names,
        };
        let log = Mutex::new(Vec::new());
        let (now, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let outcomes = Outcomes::new(deps.len());
        run(&graph, workers, &outcomes, |i| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            log.lock().unwrap().push(format!("start {i}"));
            std::thread::sleep(Duration::from_millis(30));
            log.lock().unwrap().push(format!("end {i}"));
            now.fetch_sub(1, Ordering::SeqCst);
            Ok(i)
        });
        for &n in nodes {
            assert_eq!(*outcomes.get(n).unwrap().unwrap(), n);
        }
        (log.into_inner().unwrap(), peak.into_inner())
    }

    #[test]
    fn one_worker_runs_the_graph_in_dependency_order_one_at_a_time() {
        // 0 and 1 are independent; 2 reads both.
        let (log, peak) = trace(&[&[], &[], &[0, 1]], &[0, 1, 2], 1);
        assert_eq!(peak, 1);
        assert_eq!(
            log,
            ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
        );
    }

    #[test]
    fn two_workers_run_independent_nodes_at_once_and_dependents_after() {
        let (log, peak) = trace(&[&[], &[], &[0, 1]], &[0, 1, 2], 2);
        assert_eq!(peak, 2);
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        assert!(pos("start 1") < pos("end 0"), "{log:?}");
        assert!(pos("start 2") > pos("end 0") && pos("start 2") > pos("end 1"));
    }

    #[test]
    fn never_more_workers_than_asked_and_waiting_holds_none() {
        // A chain 0 <- 1 <- 2 beside independent 3, 4, 5: with two workers
        // the chain never blocks the others (a waiting node holds no
        // worker), and never more than two run.
        let (log, peak) = trace(&[&[], &[0], &[1], &[], &[], &[]], &[0, 1, 2, 3, 4, 5], 2);
        assert_eq!(peak, 2);
        assert_eq!(log.len(), 12);
    }

    #[test]
    fn a_failure_reaches_its_dependents_with_its_cause_chain() {
        let deps = deps(&[&[], &[0], &[1], &[]]);
        let names = names(4);
        let graph = Graph {
            nodes: &[0, 1, 2, 3],
            deps: &deps,
            names: &names,
        };
        let ran = Mutex::new(Vec::new());
        let outcomes = Outcomes::new(4);
        run(&graph, 2, &outcomes, |i| {
            ran.lock().unwrap().push(i);
            if i == 0 {
                let io = std::io::Error::other("disk on fire");
                return Err(anyhow::Error::new(io).context("unpacking layer sha256:ab"));
            }
            Ok(())
        });
        let mut ran = ran.into_inner().unwrap();
        ran.sort();
        assert_eq!(ran, [0, 3], "dependents of a failure do not run");
        assert!(outcomes.get(3).unwrap().is_ok());
        let e = outcomes.get(2).unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "stage-2 did not run: a stage it needs failed"
        );
        assert_eq!(e.message(), "unpacking layer sha256:ab: disk on fire");
        // The chain, as std::error::Error sources: 2 -> 1 -> 0's error ->
        // its context -> the io::Error.
        let shared = SharedError(e);
        let mut chain = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&shared);
        while let Some(c) = cur {
            chain.push(c.to_string());
            cur = c.source();
        }
        assert_eq!(chain.len(), 4, "{chain:?}");
        assert_eq!(chain[2], "unpacking layer sha256:ab");
        assert_eq!(chain[1], "stage-1 did not run: a stage it needs failed");
        assert_eq!(chain.last().unwrap(), "disk on fire");
    }

    #[test]
    fn a_cycle_or_a_missing_dependency_fails_instead_of_hanging() {
        let deps = deps(&[&[1], &[0], &[2], &[7]]);
        let mut names = names(8);
        names[7] = "outside".into();
        let graph = Graph {
            nodes: &[0, 1, 2, 3],
            deps: &deps,
            names: &names,
        };
        let outcomes: Outcomes<()> = Outcomes::new(8);
        run(&graph, 1, &outcomes, |_| Ok(()));
        for n in 0..4 {
            let e = outcomes.get(n).unwrap().unwrap_err();
            assert!(matches!(*e, NodeError::Unreachable { .. }), "{n}: {e}");
        }
        assert!(outcomes
            .get(3)
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("needs outside"));
        assert!(outcomes
            .get(2)
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("stage-2 needs stage-2"));
    }
}
