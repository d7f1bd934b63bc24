//! The embedded, durable [`Store`]: one [redb](https://docs.rs/redb) file,
//! `state.redb`, in the configured state directory.
//!
//! Why redb:
//! - Pure Rust: no C toolchain and no bundled SQLite to compile on a 2-core
//!   build machine.
//! - ACID: a commit with the default durability fsyncs before it returns, so
//!   a future that resolved survives a crash.
//! - One file, nothing to run beside the gateway.
//! - Write transactions are serialized, so "read the family, compare
//!   `current`, write" inside one of them is the compare-and-set
//!   [`Store::rotate`] needs, with no lock of our own.
//! - Stable file format and actively maintained.
//!
//! Every operation is blocking file I/O, so it runs on
//! [`tokio::task::spawn_blocking`]; every write is one write transaction,
//! committed before the future resolves.
//!
//! Tables: `families` maps a family id to the [`Family`] as JSON; the
//! revocation tables map a `jti`, a family id or a subject to when the
//! revocation ends (`until`), subjects to `(cutoff, until)`.

use std::fmt::Display;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, WriteTransaction,
};

use super::{Family, Revocation, RotateRequest, Rotation, Store, StoreError, StoreFuture};

/// family id -> [`Family`] as JSON.
const FAMILIES: TableDefinition<&str, &[u8]> = TableDefinition::new("families");
/// Revoked access-token `jti` -> until.
const REVOKED_JTIS: TableDefinition<&str, u64> = TableDefinition::new("revoked_jtis");
/// Revoked family id -> until.
const REVOKED_FAMILIES: TableDefinition<&str, u64> = TableDefinition::new("revoked_families");
/// Subject -> (cutoff, until): tokens issued at or before `cutoff` are refused.
const REVOKED_SUBJECTS: TableDefinition<&str, (u64, u64)> =
    TableDefinition::new("revoked_subjects");

/// The file inside the state directory.
const FILE_NAME: &str = "state.redb";

/// The page cache: enough for the families and revocations in use.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The redb-backed store. Cloning is an Arc bump.
#[derive(Clone)]
pub struct Embedded {
    /// Shared with the blocking tasks, which outlive the borrow of `self`.
    db: Arc<Database>,
}

// === impl Embedded ===

impl Embedded {
    /// Creates `dir` (mode 0700) if needed and opens or creates
    /// `dir/state.redb`, with every table created. Blocking: call it at
    /// start-up, before serving.
    ///
    /// # Errors
    ///
    /// The directory cannot be created, the file cannot be opened (another
    /// process holds it, it is not a redb file, I/O), or the tables cannot
    /// be created.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        // redb's page cache defaults to 1 GiB; this state is small and hot
        // records are few, so keep memory bounded.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                    "{} is already open: is another gatehouse using this state directory?",
                    path.display()
                )),
                e => StoreError(format!("open {}: {e}", path.display())),
            })?;
        create_tables(&db)?;
        Ok(Embedded { db: Arc::new(db) })
    }

    /// Runs `op` on a blocking thread and resolves to its result.
    fn blocking<'a, T, F>(&self, op: F) -> StoreFuture<'a, T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || op(&db))
                .await
                .map_err(fail("blocking task"))?
        })
    }
}

impl Store for Embedded {
    fn insert_family(&self, family: &Family) -> StoreFuture<'_, ()> {
        let family = family.clone();
        self.blocking(move |db| write(db, |txn| insert_family(txn, &family)))
    }

    fn rotate<'a>(&'a self, req: RotateRequest<'a>) -> StoreFuture<'a, Rotation> {
        let req = Rotate::from(req);
        self.blocking(move |db| rotate(db, &req))
    }

    fn revoke_family<'a>(&'a self, family: &'a str, until: u64) -> StoreFuture<'a, ()> {
        let id = family.to_owned();
        self.blocking(move |db| write(db, |txn| revoke_family(txn, &id, until)))
    }

    fn revoke_jti<'a>(&'a self, jti: &'a str, until: u64) -> StoreFuture<'a, ()> {
        let jti = jti.to_owned();
        self.blocking(move |db| {
            write(db, |txn| {
                keep_later_until(&mut open(txn, REVOKED_JTIS)?, &jti, until)
            })
        })
    }

    fn revoke_subject<'a>(
        &'a self,
        subject: &'a str,
        cutoff: u64,
        until: u64,
    ) -> StoreFuture<'a, ()> {
        let subject = subject.to_owned();
        self.blocking(move |db| write(db, |txn| revoke_subject(txn, &subject, cutoff, until)))
    }

    fn live_revocations(&self, now: u64) -> StoreFuture<'_, Vec<Revocation>> {
        self.blocking(move |db| live_revocations(db, now))
    }

    fn sweep(&self, now: u64) -> StoreFuture<'_, usize> {
        self.blocking(move |db| write(db, |txn| sweep(txn, now)))
    }
}

// === rotation ===

/// An owned [`RotateRequest`], to move onto the blocking thread.
struct Rotate {
    family: String,
    presented: String,
    next: String,
    now: u64,
    exp: u64,
    grace: u64,
}

impl From<RotateRequest<'_>> for Rotate {
    fn from(r: RotateRequest<'_>) -> Self {
        Rotate {
            family: r.family.to_owned(),
            presented: r.presented.to_owned(),
            next: r.next.to_owned(),
            now: r.now,
            exp: r.exp,
            grace: r.grace,
        }
    }
}

/// One write transaction: read, decide, write back what changed. redb runs
/// one write transaction at a time, so two rotations of the same token
/// cannot both see it as `current`. Outcomes that change nothing abort
/// rather than commit: no fsync for a refused token.
fn rotate(db: &Database, req: &Rotate) -> Result<Rotation, StoreError> {
    let txn = db.begin_write().map_err(fail("begin write"))?;
    let outcome = rotate_in(&txn, req)?;
    if matches!(outcome, Rotation::Rotated(_) | Rotation::Reused { .. }) {
        txn.commit().map_err(fail("commit rotation"))?;
    } else {
        txn.abort().map_err(fail("end rotation"))?;
    }
    Ok(outcome)
}

fn rotate_in(txn: &WriteTransaction, req: &Rotate) -> Result<Rotation, StoreError> {
    let mut families = open(txn, FAMILIES)?;
    let live = get_family(&families, &req.family)?.filter(|f| f.exp >= req.now);
    let Some(mut family) = live else {
        return Ok(Rotation::Unknown);
    };
    let outcome = decide(&mut family, req);
    match outcome {
        Rotation::Rotated(_) => put_family(&mut families, &family)?,
        Rotation::Reused { .. } => {
            put_family(&mut families, &family)?;
            keep_later_until(&mut open(txn, REVOKED_FAMILIES)?, &family.id, family.exp)?;
        }
        Rotation::Grace | Rotation::Revoked | Rotation::Unknown => {}
    }
    Ok(outcome)
}

/// The rotation rules, applied to a live family in memory.
fn decide(family: &mut Family, req: &Rotate) -> Rotation {
    if family.revoked {
        return Rotation::Revoked;
    }
    if req.presented == family.current {
        family.previous = Some(std::mem::replace(&mut family.current, req.next.clone()));
        family.rotated_at = req.now;
        family.exp = req.exp;
        return Rotation::Rotated(family.clone());
    }
    let is_previous = family.previous.as_deref() == Some(req.presented.as_str());
    let in_window = req.now <= family.rotated_at.saturating_add(req.grace);
    if req.grace > 0 && is_previous && in_window {
        return Rotation::Grace;
    }
    // A spent (or foreign) token: whoever holds it may be a thief, so the
    // whole family goes. Its `exp` stays: the revocation lasts as long.
    family.revoked = true;
    Rotation::Reused {
        subject: family.subject.clone(),
    }
}

// === writes ===

fn insert_family(txn: &WriteTransaction, family: &Family) -> Result<(), StoreError> {
    let mut families = open(txn, FAMILIES)?;
    if get_raw(&families, &family.id)?.is_some() {
        return Err(StoreError(format!("family {} already exists", family.id)));
    }
    put_family(&mut families, family)
}

fn revoke_family(txn: &WriteTransaction, id: &str, until: u64) -> Result<(), StoreError> {
    keep_later_until(&mut open(txn, REVOKED_FAMILIES)?, id, until)?;
    let mut families = open(txn, FAMILIES)?;
    if let Some(mut family) = get_family(&families, id)? {
        family.revoked = true;
        put_family(&mut families, &family)?;
    }
    Ok(())
}

/// Sets `key`'s until, unless a later one is already recorded.
fn keep_later_until(
    table: &mut Table<&'static str, u64>,
    key: &str,
    until: u64,
) -> Result<(), StoreError> {
    let old = table.get(key).map_err(fail("read revocation"))?;
    let until = old.map_or(until, |g| g.value().max(until));
    table.insert(key, until).map_err(fail("write revocation"))?;
    Ok(())
}

/// Keeps the later cutoff and the later until, independently.
fn revoke_subject(
    txn: &WriteTransaction,
    subject: &str,
    cutoff: u64,
    until: u64,
) -> Result<(), StoreError> {
    let mut subjects = open(txn, REVOKED_SUBJECTS)?;
    let old = subjects
        .get(subject)
        .map_err(fail("read subject revocation"))?;
    let merged = old.map_or((cutoff, until), |g| {
        let (c, u) = g.value();
        (c.max(cutoff), u.max(until))
    });
    subjects
        .insert(subject, merged)
        .map_err(fail("write subject revocation"))?;
    Ok(())
}

/// Deletes families that expired before `now` and revocations no longer in
/// force (`until <= now`, the complement of [`live_revocations`]).
fn sweep(txn: &WriteTransaction, now: u64) -> Result<usize, StoreError> {
    let mut removed = sweep_families(txn, now)?;
    let mut count = |keep: bool| {
        removed += usize::from(!keep);
        keep
    };
    open(txn, REVOKED_JTIS)?
        .retain(|_, until| count(until > now))
        .map_err(fail("sweep revoked jtis"))?;
    open(txn, REVOKED_FAMILIES)?
        .retain(|_, until| count(until > now))
        .map_err(fail("sweep revoked families"))?;
    open(txn, REVOKED_SUBJECTS)?
        .retain(|_, (_, until)| count(until > now))
        .map_err(fail("sweep revoked subjects"))?;
    Ok(removed)
}

/// Collects the expired ids first: decoding can fail, and redb's `retain`
/// predicate has no way to report it.
fn sweep_families(txn: &WriteTransaction, now: u64) -> Result<usize, StoreError> {
    let mut families = open(txn, FAMILIES)?;
    let mut expired = Vec::new();
    for entry in families.iter().map_err(fail("scan families"))? {
        let (id, bytes) = entry.map_err(fail("scan families"))?;
        if decode(id.value(), bytes.value())?.exp < now {
            expired.push(id.value().to_owned());
        }
    }
    for id in &expired {
        families
            .remove(id.as_str())
            .map_err(fail("delete family"))?;
    }
    Ok(expired.len())
}

// === reads ===

fn live_revocations(db: &Database, now: u64) -> Result<Vec<Revocation>, StoreError> {
    let txn = db.begin_read().map_err(fail("begin read"))?;
    let mut live = Vec::new();
    for (jti, until) in live_untils(&txn, REVOKED_JTIS, now)? {
        live.push(Revocation::Jti { jti, until });
    }
    for (id, until) in live_untils(&txn, REVOKED_FAMILIES, now)? {
        live.push(Revocation::Family { id, until });
    }
    let subjects = txn
        .open_table(REVOKED_SUBJECTS)
        .map_err(fail("open revoked_subjects"))?;
    for entry in subjects.iter().map_err(fail("scan revoked subjects"))? {
        let (subject, value) = entry.map_err(fail("scan revoked subjects"))?;
        let (cutoff, until) = value.value();
        if until > now {
            let subject = subject.value().to_owned();
            live.push(Revocation::Subject {
                subject,
                cutoff,
                until,
            });
        }
    }
    Ok(live)
}

/// The `(key, until)` pairs of a revocation table with `until > now`.
fn live_untils(
    txn: &ReadTransaction,
    def: TableDefinition<&'static str, u64>,
    now: u64,
) -> Result<Vec<(String, u64)>, StoreError> {
    let table = txn.open_table(def).map_err(fail("open revocations"))?;
    let mut live = Vec::new();
    for entry in table.iter().map_err(fail("scan revocations"))? {
        let (key, until) = entry.map_err(fail("scan revocations"))?;
        if until.value() > now {
            live.push((key.value().to_owned(), until.value()));
        }
    }
    Ok(live)
}

// === helpers ===

/// Opening a table in a write transaction creates it, so after this no read
/// transaction fails on a missing table.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    write(db, |txn| {
        open(txn, FAMILIES)?;
        open(txn, REVOKED_JTIS)?;
        open(txn, REVOKED_FAMILIES)?;
        open(txn, REVOKED_SUBJECTS)?;
        Ok(())
    })
}

/// Runs `op` in one write transaction and commits it with the default
/// durability (`Immediate`: fsync before `commit` returns). On error the
/// transaction is dropped, which rolls it back.
fn write<T>(
    db: &Database,
    op: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let txn = db.begin_write().map_err(fail("begin write"))?;
    let out = op(&txn)?;
    txn.commit().map_err(fail("commit"))?;
    Ok(out)
}

fn open<'txn, V: redb::Value + 'static>(
    txn: &'txn WriteTransaction,
    def: TableDefinition<&'static str, V>,
) -> Result<Table<'txn, &'static str, V>, StoreError> {
    txn.open_table(def)
        .map_err(|e| StoreError(format!("open table {def}: {e}")))
}

fn get_raw(
    families: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let guard = families.get(id).map_err(fail("read family"))?;
    Ok(guard.map(|g| g.value().to_vec()))
}

fn get_family(
    families: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Family>, StoreError> {
    get_raw(families, id)?
        .map(|bytes| decode(id, &bytes))
        .transpose()
}

fn put_family(
    families: &mut Table<&'static str, &'static [u8]>,
    family: &Family,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(family)
        .map_err(|e| StoreError(format!("encode family {}: {e}", family.id)))?;
    families
        .insert(family.id.as_str(), bytes.as_slice())
        .map_err(|e| StoreError(format!("write family {}: {e}", family.id)))?;
    Ok(())
}

fn decode(id: &str, bytes: &[u8]) -> Result<Family, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("decode family {id}: {e}")))
}

/// `map_err` adapter: "what we were doing: redb's error".
fn fail<E: Display>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError(format!("{context}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const NOW: u64 = 1_000_000;

    fn store() -> (tempfile::TempDir, Embedded) {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("state")).unwrap();
        (dir, store)
    }

    fn family(id: &str, current: &str) -> Family {
        Family {
            id: id.to_owned(),
            subject: "alice".to_owned(),
            roles: vec!["admin".to_owned()],
            claims: serde_json::json!({ "tenant": "acme" })
                .as_object()
                .unwrap()
                .clone(),
            current: current.to_owned(),
            previous: None,
            rotated_at: NOW,
            exp: NOW + 3600,
            revoked: false,
        }
    }

    fn req<'a>(family: &'a str, presented: &'a str, next: &'a str, now: u64) -> RotateRequest<'a> {
        RotateRequest {
            family,
            presented,
            next,
            now,
            exp: now + 7200,
            grace: 0,
        }
    }

    /// Reads a family straight from the file, as a restarted gateway would.
    fn stored(store: &Embedded, id: &str) -> Option<Family> {
        let txn = store.db.begin_read().unwrap();
        get_family(&txn.open_table(FAMILIES).unwrap(), id).unwrap()
    }

    fn rotated(outcome: &Rotation) -> bool {
        matches!(outcome, Rotation::Rotated(_))
    }

    fn reused() -> Rotation {
        Rotation::Reused {
            subject: "alice".to_owned(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn open_creates_private_dir_and_empty_tables() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        let store = Embedded::open(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(state.join(FILE_NAME).is_file());
        assert_eq!(store.live_revocations(0).await.unwrap(), vec![]);
        assert_eq!(store.sweep(NOW).await.unwrap(), 0);
    }

    #[test]
    fn second_open_of_same_dir_is_already_open_error() {
        let (dir, _first) = store();
        let err = Embedded::open(&dir.path().join("state")).err().unwrap();
        assert!(err.to_string().contains("already open"), "{err}");
    }

    #[test]
    fn open_rejects_a_file_that_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"not redb at all, not at all").unwrap();
        let err = Embedded::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("state.redb"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn insert_family_stores_it_and_rejects_a_duplicate_id() {
        let (_dir, store) = store();
        let f = family("f1", "r1");
        store.insert_family(&f).await.unwrap();
        assert_eq!(stored(&store, "f1"), Some(f.clone()));
        let err = store
            .insert_family(&family("f1", "other"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("f1 already exists"), "{err}");
        assert_eq!(stored(&store, "f1"), Some(f));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rotate_current_token_makes_next_current() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        let out = store.rotate(req("f1", "r1", "r2", NOW + 10)).await.unwrap();
        let f = stored(&store, "f1").unwrap();
        assert_eq!(
            out,
            Rotation::Rotated(f.clone()),
            "returns the family as stored"
        );
        assert_eq!(f.current, "r2");
        assert_eq!(f.previous.as_deref(), Some("r1"));
        assert_eq!((f.rotated_at, f.exp), (NOW + 10, NOW + 10 + 7200));
        assert!(!f.revoked);
        // The new token rotates in turn.
        let out = store.rotate(req("f1", "r2", "r3", NOW + 20)).await.unwrap();
        assert!(matches!(out, Rotation::Rotated(f) if f.current == "r3"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn previous_token_within_grace_is_grace_and_changes_nothing() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        store.rotate(req("f1", "r1", "r2", NOW)).await.unwrap();
        let before = stored(&store, "f1");
        let retry = RotateRequest {
            grace: 30,
            ..req("f1", "r1", "r9", NOW + 30)
        };
        assert_eq!(store.rotate(retry).await.unwrap(), Rotation::Grace);
        assert_eq!(stored(&store, "f1"), before);
        assert_eq!(store.live_revocations(NOW).await.unwrap(), vec![]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn previous_token_after_grace_is_reuse_and_revokes_family() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        store.rotate(req("f1", "r1", "r2", NOW)).await.unwrap();
        let late = RotateRequest {
            grace: 30,
            ..req("f1", "r1", "r9", NOW + 31)
        };
        assert_eq!(store.rotate(late).await.unwrap(), reused());
        let f = stored(&store, "f1").unwrap();
        assert!(f.revoked);
        assert_eq!(f.current, "r2", "a reuse does not rotate");
        let live = store.live_revocations(NOW).await.unwrap();
        assert_eq!(
            live,
            vec![Revocation::Family {
                id: "f1".into(),
                until: f.exp
            }]
        );
        // Even the real current token is refused now.
        let out = store.rotate(req("f1", "r2", "r3", NOW + 40)).await.unwrap();
        assert_eq!(out, Rotation::Revoked);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn previous_token_with_zero_grace_is_reuse() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        store.rotate(req("f1", "r1", "r2", NOW)).await.unwrap();
        let out = store.rotate(req("f1", "r1", "r9", NOW)).await.unwrap();
        assert_eq!(out, reused());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn token_neither_current_nor_previous_is_reuse_even_in_grace() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        let stranger = RotateRequest {
            grace: 30,
            ..req("f1", "r0", "r9", NOW)
        };
        assert_eq!(store.rotate(stranger).await.unwrap(), reused());
        let f = stored(&store, "f1").unwrap();
        assert!(f.revoked);
        assert_eq!(f.exp, NOW + 3600, "revocation keeps the family's exp");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn revoked_family_answers_revoked_even_for_current_token() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        store.revoke_family("f1", NOW + 3600).await.unwrap();
        let out = store.rotate(req("f1", "r1", "r2", NOW)).await.unwrap();
        assert_eq!(out, Rotation::Revoked);
        assert_eq!(stored(&store, "f1").unwrap().current, "r1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn missing_or_expired_family_is_unknown() {
        let (_dir, store) = store();
        let out = store.rotate(req("nope", "r1", "r2", NOW)).await.unwrap();
        assert_eq!(out, Rotation::Unknown);
        store.insert_family(&family("f1", "r1")).await.unwrap();
        let at_exp = store
            .rotate(req("f1", "r1", "r2", NOW + 3600))
            .await
            .unwrap();
        assert!(rotated(&at_exp), "exp itself is still valid: {at_exp:?}");
        let after = store
            .rotate(req("f1", "r2", "r3", NOW + 20_000))
            .await
            .unwrap();
        assert_eq!(after, Rotation::Unknown);
        assert!(!stored(&store, "f1").unwrap().revoked);
    }

    /// Fires `n` rotations of the same token at once; returns the outcomes.
    async fn race(store: &Embedded, n: usize, grace: u64) -> Vec<Rotation> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let next = format!("next-{i}");
                    let r = RotateRequest {
                        grace,
                        ..req("f1", "r1", &next, NOW)
                    };
                    store.rotate(r).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    }

    fn count(outcomes: &[Rotation], want: impl Fn(&Rotation) -> bool) -> usize {
        outcomes.iter().filter(|o| want(o)).count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_rotations_have_one_winner_and_reuse_revokes() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        let outcomes = race(&store, 20, 0).await;
        // The winner rotates; the next one presents what is now `previous`
        // with no grace (reuse: family revoked); the rest find it revoked.
        assert_eq!(count(&outcomes, rotated), 1, "{outcomes:?}");
        assert_eq!(count(&outcomes, |o| *o == reused()), 1, "{outcomes:?}");
        assert_eq!(count(&outcomes, |o| *o == Rotation::Revoked), 18);
        let f = stored(&store, "f1").unwrap();
        assert!(f.revoked);
        assert!(f.current.starts_with("next-"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_rotations_within_grace_have_one_winner() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        let outcomes = race(&store, 20, 30).await;
        assert_eq!(count(&outcomes, rotated), 1, "{outcomes:?}");
        assert_eq!(count(&outcomes, |o| *o == Rotation::Grace), 19);
        assert!(!stored(&store, "f1").unwrap().revoked);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn revoke_family_marks_record_and_keeps_later_until() {
        let (_dir, store) = store();
        store.insert_family(&family("f1", "r1")).await.unwrap();
        store.revoke_family("f1", NOW + 500).await.unwrap();
        store.revoke_family("f1", NOW + 100).await.unwrap();
        assert!(stored(&store, "f1").unwrap().revoked);
        let live = store.live_revocations(NOW).await.unwrap();
        assert_eq!(
            live,
            vec![Revocation::Family {
                id: "f1".into(),
                until: NOW + 500
            }]
        );
        store.revoke_family("f1", NOW + 900).await.unwrap();
        let live = store.live_revocations(NOW).await.unwrap();
        assert_eq!(
            live,
            vec![Revocation::Family {
                id: "f1".into(),
                until: NOW + 900
            }]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn revoke_family_without_record_still_records_revocation() {
        let (_dir, store) = store();
        store.revoke_family("ghost", NOW + 5).await.unwrap();
        assert_eq!(stored(&store, "ghost"), None);
        let live = store.live_revocations(NOW).await.unwrap();
        assert_eq!(
            live,
            vec![Revocation::Family {
                id: "ghost".into(),
                until: NOW + 5
            }]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn revoke_jti_keeps_later_until() {
        let (_dir, store) = store();
        store.revoke_jti("j1", NOW + 60).await.unwrap();
        store.revoke_jti("j1", NOW + 10).await.unwrap();
        let live = store.live_revocations(NOW).await.unwrap();
        assert_eq!(
            live,
            vec![Revocation::Jti {
                jti: "j1".into(),
                until: NOW + 60
            }]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn revoke_subject_keeps_later_cutoff_and_later_until() {
        let (_dir, store) = store();
        store.revoke_subject("alice", NOW, NOW + 100).await.unwrap();
        store
            .revoke_subject("alice", NOW - 50, NOW + 900)
            .await
            .unwrap();
        let live = store.live_revocations(NOW).await.unwrap();
        let want = Revocation::Subject {
            subject: "alice".into(),
            cutoff: NOW,
            until: NOW + 900,
        };
        assert_eq!(live, vec![want]);
        store
            .revoke_subject("alice", NOW + 10, NOW + 20)
            .await
            .unwrap();
        let live = store.live_revocations(NOW).await.unwrap();
        let want = Revocation::Subject {
            subject: "alice".into(),
            cutoff: NOW + 10,
            until: NOW + 900,
        };
        assert_eq!(live, vec![want]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn live_revocations_skips_expired_ones() {
        let (_dir, store) = store();
        store.revoke_jti("old-jti", NOW).await.unwrap();
        store.revoke_jti("new-jti", NOW + 1).await.unwrap();
        store.revoke_family("old-fam", NOW - 1).await.unwrap();
        store.revoke_family("new-fam", NOW + 1).await.unwrap();
        store.revoke_subject("old-sub", NOW - 9, NOW).await.unwrap();
        store
            .revoke_subject("new-sub", NOW - 9, NOW + 1)
            .await
            .unwrap();
        let live: HashSet<_> = store
            .live_revocations(NOW)
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{r:?}"))
            .collect();
        let want: HashSet<_> = [
            Revocation::Jti {
                jti: "new-jti".into(),
                until: NOW + 1,
            },
            Revocation::Family {
                id: "new-fam".into(),
                until: NOW + 1,
            },
            Revocation::Subject {
                subject: "new-sub".into(),
                cutoff: NOW - 9,
                until: NOW + 1,
            },
        ]
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
        assert_eq!(live, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sweep_removes_only_expired_records() {
        let (_dir, store) = store();
        let mut old = family("old", "r1");
        old.exp = NOW - 1;
        let mut edge = family("edge", "r1");
        edge.exp = NOW;
        store.insert_family(&old).await.unwrap();
        store.insert_family(&edge).await.unwrap();
        store.insert_family(&family("young", "r1")).await.unwrap();
        store.revoke_jti("old-jti", NOW).await.unwrap();
        store.revoke_jti("new-jti", NOW + 1).await.unwrap();
        store.revoke_family("old-fam", NOW - 1).await.unwrap();
        store.revoke_family("new-fam", NOW + 1).await.unwrap();
        store.revoke_subject("old-sub", NOW - 9, NOW).await.unwrap();
        store
            .revoke_subject("new-sub", NOW - 9, NOW + 1)
            .await
            .unwrap();

        assert_eq!(store.sweep(NOW).await.unwrap(), 4);
        assert_eq!(stored(&store, "old"), None);
        assert!(
            stored(&store, "edge").is_some(),
            "exp == now is not before now"
        );
        assert!(stored(&store, "young").is_some());
        assert_eq!(store.live_revocations(0).await.unwrap().len(), 3);
        assert_eq!(store.sweep(NOW).await.unwrap(), 0, "nothing left to sweep");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Embedded::open(dir.path()).unwrap();
            store.insert_family(&family("f1", "r1")).await.unwrap();
            store.rotate(req("f1", "r1", "r2", NOW)).await.unwrap();
            store.revoke_jti("j1", NOW + 60).await.unwrap();
            store.revoke_family("f2", NOW + 60).await.unwrap();
            store.revoke_subject("bob", NOW, NOW + 60).await.unwrap();
        }
        let store = Embedded::open(dir.path()).unwrap();
        let f = stored(&store, "f1").unwrap();
        assert_eq!(
            (f.current.as_str(), f.previous.as_deref()),
            ("r2", Some("r1"))
        );
        assert_eq!(store.live_revocations(NOW).await.unwrap().len(), 3);
        let out = store.rotate(req("f1", "r2", "r3", NOW + 1)).await.unwrap();
        assert!(rotated(&out), "{out:?}");
    }
}
