//! The shared tier in Redis: entries under `{REDIS_KEY_PREFIX}:v1:` keys, read and written
//! through the [`RedisClient`] (which owns nodes, slots, health and deadlines), with their tags'
//! indexes kept beside them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::cache::entry::{Entry, now_ms};
use crate::cache::purge::PurgeMode;
use crate::cache::redis::{CommandError, Node, RedisClient, RedisOp, as_int, key_slot};
use crate::cache::tier::{Tier, TierError, TierHealth, TierName};

/// The first read of an entry takes at most this many bytes (with the value's length).
const FIRST_READ_BYTES: usize = 64 * 1024;

/// Purges the entry KEYS[1] in one step (no fill can land between a read and a write):
/// removes it (ARGV[1] `hard`), or ends its freshness at ARGV[2] (`soft`: the first `"f":` of
/// the encoding, which comes before the value), keeping its TTL; 1 when there was an entry.
const PURGE_KEY: &str = "local v = redis.call('get', KEYS[1]) \
if not v then return 0 end \
if ARGV[1] == 'hard' then redis.call('del', KEYS[1]) return 1 end \
local f = string.match(v, '\"f\":(%d+)') \
if f and tonumber(f) > tonumber(ARGV[2]) then \
  local stale = string.gsub(v, '\"f\":%d+', '\"f\":' .. ARGV[2], 1) \
  redis.call('set', KEYS[1], stale, 'KEEPTTL') \
end \
return 1";

/// Members of a tag's set read (`SSCAN … COUNT`) and purged per step of a tag purge. Small,
/// because a script holds Redis's one thread: at about 5 µs a key, a step of 1,000 kept every
/// other client of that Redis waiting 5 ms (and, on a core shared with replicas, a hit that
/// could not preempt it waited as long); a step of 64 is about 0.3 ms, and a million-entry tag
/// still finishes within its time (docs/architecture.md, "Redis").
const TAG_PURGE_CHUNK: usize = 64;

/// A tag's index is trimmed of members whose entries are gone once it holds more than this.
const TAG_INDEX_TRIM_FROM: i64 = 64;

/// Adds ARGV[1] to the set KEYS[1] and makes the set live at least ARGV[2] ms more; its size.
const ADD_TO_TAG: &str = "redis.call('sadd', KEYS[1], ARGV[1]) \
local ttl = redis.call('pttl', KEYS[1]) \
if ttl < tonumber(ARGV[2]) then redis.call('pexpire', KEYS[1], ARGV[2]) end \
return redis.call('scard', KEYS[1])";

/// Bytes of an entry a tag purge reads first (`GETRANGE`): its times, validators and tags come
/// before the value, so the value (up to megabytes) is read only when they do not fit.
const TAG_PURGE_HEAD_BYTES: usize = 4096;

/// Purges each entry of KEYS (one hash slot) that carries exactly the tag ARGV[1] (given as
/// JSON, quotes included, as the entry encodes it): removes it (ARGV[2] `hard`) or ends its
/// freshness at ARGV[3] (`soft`), keeping its TTL. Answers a list: 1 for each key it purged, else 0.
///
/// Why a scan of the encoding and not cjson: decoding every entry (value included) cost about
/// 6 µs a key, a million-entry tag 6 s of Redis's one thread; this reads the first ARGV[4] bytes
/// and walks the `tg` array's strings, about 2 µs. It is exact, not a pattern: every `"` that
/// a JSON string holds is escaped, so the first `"tg":[` before the first `,"v":` is the
/// top-level tag list (the value comes last), and each string in it is compared whole, from
/// its opening quote to its closing one. A soft purge writes the new freshness in place
/// (`SETRANGE`) when it has as many digits as the old, which it always has between 2001 and
/// 2286; else it rewrites the entry.
///
/// With ARGV[5] `2` (one server, where the tag's set may be touched in the same script), KEYS
/// is the tag's set alone: the script reads the step's members itself (`SSCAN` from cursor
/// ARGV[6], `COUNT` ARGV[7]), purges them, takes out of the set, in the same step, each member
/// it deleted and each whose entry is gone or no longer carries the tag, and answers `{next
/// cursor, how many it purged}`. A step is then one round trip, no member crosses the network,
/// and a purge costs no `SREM` and no `EXISTS` round of its own, and needs no check for entries
/// stored again meanwhile: a store after the script adds its member again, one before it was
/// purged by it. (The members are keys the script was not given; Redis checks that only in a
/// cluster, where this form is never used.)
const PURGE_IF_TAGGED: &str = "local tag, tl, head = ARGV[1], #ARGV[1], tonumber(ARGV[4]) \
local keys, n, set, cursor = KEYS, #KEYS, nil, nil \
if ARGV[5] == '2' then \
  set = KEYS[1] \
  local page = redis.call('sscan', set, ARGV[6], 'COUNT', ARGV[7]) \
  cursor, keys = page[1], page[2] \
  n = #keys \
end \
local out = {} \
for i = 1, n do \
  local k = keys[i] \
  out[i] = 0 \
  local v = redis.pcall('getrange', k, 0, head - 1) \
  if type(v) ~= 'string' then v = '' end \
  if #v == head and not string.find(v, ',\"v\":', 1, true) then \
    v = redis.pcall('get', k) \
    if type(v) ~= 'string' then v = '' end \
  end \
  local vp = string.find(v, ',\"v\":', 1, true) \
  local s = string.find(v, '\"tg\":[', 1, true) \
  local found = false \
  if s and (not vp or s < vp) then \
    local p = s + 6 \
    while string.byte(v, p) == 34 do \
      if string.sub(v, p, p + tl - 1) == tag then \
        local d = string.byte(v, p + tl) \
        if d == 44 or d == 93 then found = true break end \
      end \
      local q = p + 1 \
      while true do \
        q = string.find(v, '\"', q, true) \
        if not q then break end \
        local b = q - 1 \
        while string.byte(v, b) == 92 do b = b - 1 end \
        if (q - 1 - b) % 2 == 0 then break end \
        q = q + 1 \
      end \
      if not q or string.byte(v, q + 1) ~= 44 then break end \
      p = q + 2 \
    end \
  end \
  if found then \
    out[i] = 1 \
    if ARGV[2] == 'hard' then \
      redis.call('del', k) \
      if set then redis.call('srem', set, k) end \
    else \
      local fs, _, f = string.find(v, '\"f\":(%d+)') \
      if f and tonumber(f) > tonumber(ARGV[3]) then \
        if #f == #ARGV[3] then redis.call('setrange', k, fs + 3, ARGV[3]) \
        else \
          local whole = redis.call('get', k) \
          local stale = string.gsub(whole, '\"f\":%d+', '\"f\":' .. ARGV[3], 1) \
          redis.call('set', k, stale, 'KEEPTTL') \
        end \
      end \
    end \
  elseif set then \
    redis.call('srem', set, k) \
  end \
end \
if cursor then \
  local purged = 0 \
  for i = 1, n do purged = purged + out[i] end \
  return {cursor, purged} \
end \
return out";

/// Reads the keys KEYS (one hash slot) in one go when their values fit ARGV[1] bytes: `{1,
/// values}`; else `{0, lengths}` (then they are read in chunks of that many bytes, a value larger
/// than this service could write refused by its length without being read).
const READ_IF_SMALL: &str = "local total = 0 \
local lens = {} \
for i, k in ipairs(KEYS) do lens[i] = redis.call('strlen', k); total = total + lens[i] end \
if total <= tonumber(ARGV[1]) then return {1, redis.call('mget', unpack(KEYS))} end \
return {0, lens}";

/// What a lookup of one key in the tier found.
type Found = Result<Option<Arc<Entry>>, TierError>;

/// Bytes one bulk read (an `MGET`) moves at most, by the lengths read first; a larger value is
/// read alone. Keeps every reply small enough that no other command on the node's connection
/// waits long behind it.
const BULK_BYTES: usize = 4 << 20;

/// The Redis tier; cheap to clone (all state is shared).
#[derive(Clone)]
pub struct RedisTier {
    /// Nodes, slots, health and deadlines.
    client: RedisClient,
    /// The largest entry this service can write (from `ORIGIN_MAX_BODY_BYTES`); a longer value
    /// under an entry key is refused after its first `FIRST_READ_BYTES` and its length.
    max_entry_bytes: usize,
}

impl From<CommandError> for TierError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Unavailable => TierError::Unavailable,
            CommandError::Timeout => TierError::Timeout,
            CommandError::Failed(why) => TierError::Failed(why),
            CommandError::Refused(why) => TierError::Refused(why),
        }
    }
}

impl RedisTier {
    /// Drops from the tag's set the members whose entries are gone (deleted by a hard tag
    /// purge, or found absent by `trim_tag`; grouped by the node of their entry in `gone`), then
    /// puts back those whose entry was stored again meanwhile. A fill writes its entry before
    /// its tags, so either its `SADD` comes after the `SREM` here, or its entry is there when
    /// looked at after it: a fill that lands during a sweep keeps its place in the set, and the
    /// next purge of the tag finds it. (A hard purge used to unlink the whole set at the end,
    /// and the trim removed a member after looking, taking such members with them.) Best
    /// effort: a member left behind only costs the next purge a look; one whose entry cannot be
    /// checked is put back.
    async fn forget_members(&self, tag_key: &str, gone: Vec<(Arc<Node>, Vec<String>)>) {
        if gone.iter().all(|(_, keys)| keys.is_empty()) {
            return;
        }
        let all: Vec<&String> = gone.iter().flat_map(|(_, keys)| keys).collect();
        let srem = redis::cmd("SREM").arg(tag_key).arg(&all).to_owned();
        if self
            .client
            .run::<i64>(RedisOp::Del, tag_key.as_bytes(), &srem)
            .await
            .is_err()
        {
            return;
        }
        let checks = gone
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(node, keys)| async move {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("EXISTS").arg(key);
                }
                match self
                    .client
                    .run_pipe_within::<Vec<i64>>(RedisOp::Get, node, &pipe, self.client.response_timeout())
                    .await
                {
                    Ok(found) => keys
                        .iter()
                        .zip(found)
                        .filter(|(_, n)| *n > 0)
                        .map(|(k, _)| k.clone())
                        .collect(),
                    Err(_) => keys.clone(),
                }
            });
        let back: Vec<String> = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !back.is_empty() {
            let sadd = redis::cmd("SADD").arg(tag_key).arg(&back).to_owned();
            let _ = self
                .client
                .run::<i64>(RedisOp::Set, tag_key.as_bytes(), &sadd)
                .await;
        }
    }

    /// The tier over `client`. `max_entry_bytes` bounds what a read of one entry transfers (see
    /// [`Entry::max_encoded_len`]).
    pub fn new(client: RedisClient, max_entry_bytes: usize) -> Self {
        RedisTier {
            client,
            max_entry_bytes,
        }
    }

    /// The client the tier reads and writes through.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    /// A value under an entry key that is larger than this service can write (`len` bytes):
    /// counted as a `get` error, logged, and `UNLINK`ed (freed in the background, not blocking
    /// Redis), since no replica can use it and the next read, here or elsewhere, should not pay
    /// for it again. The read is a miss, and the origin's value replaces it.
    async fn refuse_oversized(&self, entry_key: &str, len: usize) {
        self.client.metrics().redis_error(RedisOp::Get);
        tracing::warn!(
            bytes = len,
            limit = self.max_entry_bytes,
            "redis holds a value larger than this service can write under an entry key; removed, and replaced by the next fetch"
        );
        let unlink = redis::cmd("UNLINK").arg(entry_key).to_owned();
        let _ = self
            .client
            .run::<i64>(RedisOp::Del, entry_key.as_bytes(), &unlink)
            .await;
    }

    /// The values of `entry_keys` at the positions `slots` (grouped by hash slot) on `node`,
    /// read as [`Tier::get_many`] describes.
    async fn read_node(
        &self,
        node: &Arc<Node>,
        keys: &[&str],
        entry_keys: &[String],
        slots: Vec<Vec<usize>>,
    ) -> Vec<(usize, Found)> {
        let all = || slots.iter().flatten().copied();
        if !node.is_up() {
            return all().map(|i| (i, Err(TierError::Unavailable))).collect();
        }
        // One script per hash slot, in one pipeline: the values when they fit one bulk read
        // (the common case: one round trip), else only their lengths.
        let mut small = redis::pipe();
        for slot in &slots {
            let read = small.cmd("EVAL").arg(READ_IF_SMALL).arg(slot.len());
            for &i in slot {
                read.arg(&entry_keys[i]);
            }
            read.arg(BULK_BYTES);
        }
        let replies = match self
            .client
            .run_pipe_on::<Vec<Value>>(RedisOp::Get, node, &small)
            .await
        {
            Ok(replies) if replies.len() == slots.len() => replies,
            Ok(_) => {
                let e = TierError::Failed("fewer replies than scripts".to_owned());
                return all().map(|i| (i, Err(e.clone()))).collect();
            }
            Err(e) => {
                let e = TierError::from(e);
                return all().map(|i| (i, Err(e.clone()))).collect();
            }
        };
        let max = self.max_entry_bytes;
        let mut out = Vec::with_capacity(slots.iter().map(Vec::len).sum());
        let mut length: HashMap<usize, usize> = HashMap::new();
        let mut large = Vec::new();
        for (slot, reply) in slots.iter().zip(replies) {
            let Value::Array(parts) = reply else {
                out.extend(
                    slot.iter()
                        .map(|&i| (i, Err(TierError::Failed("unexpected reply".to_owned())))),
                );
                continue;
            };
            let (kind, items) = match parts.as_slice() {
                [kind, Value::Array(items)] if items.len() == slot.len() => (as_int(kind), items),
                _ => {
                    out.extend(
                        slot.iter()
                            .map(|&i| (i, Err(TierError::Failed("unexpected reply".to_owned())))),
                    );
                    continue;
                }
            };
            if kind == Some(1) {
                for (&i, value) in slot.iter().zip(items) {
                    let bytes = match value {
                        Value::BulkString(b) => Some(b.as_slice()),
                        _ => None,
                    };
                    out.push((i, Ok(self.found(keys[i], &entry_keys[i], bytes).await)));
                }
                continue;
            }
            for (&i, len) in slot.iter().zip(items) {
                length.insert(i, as_int(len).unwrap_or(0).max(0) as usize);
            }
            large.push(slot);
        }
        for slot in large {
            let mut chunk: Vec<usize> = Vec::new();
            let mut bytes = 0;
            for &i in slot {
                let len = length.get(&i).copied().unwrap_or(0);
                if len == 0 {
                    out.push((i, Ok(None)));
                    continue;
                }
                if len > max {
                    self.refuse_oversized(&entry_keys[i], len).await;
                    out.push((i, Ok(None)));
                    continue;
                }
                if !chunk.is_empty() && bytes + len > BULK_BYTES {
                    self.mget(
                        node,
                        keys,
                        entry_keys,
                        std::mem::take(&mut chunk),
                        bytes,
                        &mut out,
                    )
                    .await;
                    bytes = 0;
                }
                chunk.push(i);
                bytes += len;
            }
            if !chunk.is_empty() {
                self.mget(node, keys, entry_keys, chunk, bytes, &mut out).await;
            }
        }
        out
    }

    /// One `MGET` of the keys at `chunk` (about `bytes` in all) under a bulk deadline.
    async fn mget(
        &self,
        node: &Arc<Node>,
        keys: &[&str],
        entry_keys: &[String],
        chunk: Vec<usize>,
        bytes: usize,
        out: &mut Vec<(usize, Found)>,
    ) {
        let mut mget = redis::cmd("MGET");
        for &i in &chunk {
            mget.arg(&entry_keys[i]);
        }
        let mut pipe = redis::pipe();
        pipe.add_command(mget);
        let deadline = self.bulk_deadline(bytes);
        let values = self
            .client
            .run_pipe_within::<Vec<Vec<Option<Vec<u8>>>>>(RedisOp::Get, node, &pipe, deadline)
            .await
            .map_err(TierError::from)
            .and_then(|mut v| {
                v.pop()
                    .ok_or_else(|| TierError::Failed("no MGET reply".to_owned()))
            })
            .and_then(|v| {
                if v.len() == chunk.len() {
                    Ok(v)
                } else {
                    Err(TierError::Failed("fewer MGET replies than keys".to_owned()))
                }
            });
        let values = match values {
            Ok(values) => values,
            Err(e) => {
                out.extend(chunk.iter().map(|&i| (i, Err(e.clone()))));
                return;
            }
        };
        for (&i, bytes) in chunk.iter().zip(values) {
            // A value may have been rewritten larger between its length and this read.
            out.push((i, Ok(self.found(keys[i], &entry_keys[i], bytes.as_deref()).await)));
        }
    }

    /// The entry of `key` in the `bytes` a bulk read found under `entry_key`: none when absent,
    /// undecodable, or larger than this service could have written (then refused and unlinked).
    async fn found(&self, key: &str, entry_key: &str, bytes: Option<&[u8]>) -> Option<Arc<Entry>> {
        let bytes = bytes?;
        if bytes.len() > self.max_entry_bytes {
            self.refuse_oversized(entry_key, bytes.len()).await;
            return None;
        }
        servable(key, bytes)
    }

    /// The deadline of a bulk command moving `bytes`: one command's, plus 1 ms per 64 KiB
    /// (64 MB/s, far below loopback or a data-centre link), so a large reply is never mistaken
    /// for a silent server.
    fn bulk_deadline(&self, bytes: usize) -> Duration {
        self.client.response_timeout() + Duration::from_millis((bytes / (64 << 10)) as u64)
    }

    /// The Redis key of `tag`'s index: the set of entry keys stored with it.
    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.client.key_prefix())
    }

    /// Adds `entry_key` to `tag`'s index, which then lives at least as long as the entry (so
    /// it never outlives every entry it names by more than the longest of them), and drops up
    /// to two members whose entries are gone, so a tag on ever new keys does not grow its index
    /// without bound. Failures are counted and skipped: the entry is stored either way, and a
    /// tag purge that misses it leaves it to expire.
    async fn index_tag(&self, tag: &str, entry_key: &str, keep_ms: u64) {
        let tag_key = self.tag_key(tag);
        let add = redis::cmd("EVAL")
            .arg(ADD_TO_TAG)
            .arg(1)
            .arg(&tag_key)
            .arg(entry_key)
            .arg(keep_ms)
            .to_owned();
        let Ok(size) = self
            .client
            .run::<i64>(RedisOp::Set, tag_key.as_bytes(), &add)
            .await
        else {
            return;
        };
        if size > TAG_INDEX_TRIM_FROM {
            self.trim_tag(&tag_key, entry_key).await;
        }
    }

    /// Drops up to two members of the tag set `tag_key` whose entries are gone (never
    /// `entry_key`, just added), so a tag on ever new keys does not grow its set without bound.
    async fn trim_tag(&self, tag_key: &str, entry_key: &str) {
        let sample = redis::cmd("SRANDMEMBER").arg(tag_key).arg(2).to_owned();
        let Ok(sample) = self
            .client
            .run::<Vec<String>>(RedisOp::Get, tag_key.as_bytes(), &sample)
            .await
        else {
            return;
        };
        let mut gone = Vec::new();
        for member in sample.into_iter().filter(|m| m != entry_key) {
            let exists = redis::cmd("EXISTS").arg(&member).to_owned();
            if self
                .client
                .run::<i64>(RedisOp::Get, member.as_bytes(), &exists)
                .await
                == Ok(0)
            {
                let node = self.client.topology().node_for(member.as_bytes()).clone();
                gone.push((node, vec![member]));
            }
        }
        self.forget_members(tag_key, gone).await;
    }

    fn entry_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.client.key_prefix().len() + 2 + key.len());
        k.push_str(self.client.key_prefix());
        k.push_str("k:");
        k.push_str(key);
        k
    }
}

/// The entry stored as `bytes` for `key`, if it decodes and is not past its stale window.
fn servable(key: &str, bytes: &[u8]) -> Option<Arc<Entry>> {
    Some(bytes)
        .filter(|b| !b.is_empty())
        .and_then(|b| Entry::decode(key, b))
        .filter(|e| e.stale_until_ms > now_ms())
        .map(Arc::new)
}

impl Tier for RedisTier {
    fn name(&self) -> TierName {
        TierName::Redis
    }

    fn health(&self) -> TierHealth {
        let h = self.client.health();
        TierHealth {
            status: match h.as_str() {
                "ok" if self.client.writes_failing() => "write_failing",
                other => other,
            },
            nodes: Some((h.nodes, h.down)),
        }
    }

    fn shared(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, TierError> {
        // Never GET: a value larger than this service could have written (put there by
        // something else) must not be transferred whole, or it holds up every other command on
        // the node's connection. One round trip reads the first 64 KiB and the length; only a
        // value longer than that and within the limit costs a second one for the rest.
        let max = self.max_entry_bytes;
        let entry_key = self.entry_key(key);
        let first = redis::pipe()
            .cmd("GETRANGE")
            .arg(&entry_key)
            .arg(0)
            .arg(FIRST_READ_BYTES - 1)
            .cmd("STRLEN")
            .arg(&entry_key)
            .to_owned();
        let (mut bytes, len): (Vec<u8>, usize) = self
            .client
            .run_pipe(RedisOp::Get, entry_key.as_bytes(), &first)
            .await?;
        if len > max {
            self.refuse_oversized(&entry_key, len).await;
            return Ok(None);
        }
        if len > bytes.len() {
            let rest = redis::cmd("GETRANGE")
                .arg(&entry_key)
                .arg(bytes.len())
                .arg(len - 1)
                .to_owned();
            let rest: Vec<u8> = self.client.run(RedisOp::Get, entry_key.as_bytes(), &rest).await?;
            bytes.extend_from_slice(&rest);
            // Rewritten between the two reads: not one value; a miss.
            if bytes.len() != len {
                return Ok(None);
            }
        }
        Ok(servable(key, &bytes))
    }

    /// Per node (the nodes asked in parallel): one pipeline of `STRLEN`s, then `MGET`s of the
    /// keys that exist, one hash slot at a time, each moving at most `BULK_BYTES` (a value
    /// larger than that goes alone), each under a deadline that grows with the bytes it moves.
    /// A slow bulk command never marks a node down (only pings do), and no single reply can
    /// hold up the node's connection for long. A node known to be down is not asked (its keys
    /// are `Unavailable`); a failed command fails only its own keys.
    ///
    /// A value larger than this service could have written (put there by something else) is
    /// refused by its length before it is read, counted as a `get` error and `UNLINK`ed.
    async fn get_many(&self, keys: &[&str]) -> Vec<Result<Option<Arc<Entry>>, TierError>> {
        let entry_keys: Vec<String> = keys.iter().map(|k| self.entry_key(k)).collect();
        let topology = self.client.topology();
        // Node index → slot → positions in `keys`. One server serves every slot: one group.
        let mut groups: std::collections::BTreeMap<usize, std::collections::BTreeMap<u16, Vec<usize>>> =
            std::collections::BTreeMap::new();
        for (i, k) in entry_keys.iter().enumerate() {
            let (node, slot) = if topology.slots.is_empty() {
                (0, 0)
            } else {
                let slot = key_slot(k.as_bytes());
                (usize::from(topology.slots[usize::from(slot)]), slot)
            };
            groups.entry(node).or_default().entry(slot).or_default().push(i);
        }
        let rounds = groups.into_iter().map(|(node, slots)| {
            let node = topology.nodes[node].clone();
            let (entry_keys, keys) = (&entry_keys, keys);
            async move {
                let slots: Vec<Vec<usize>> = slots.into_values().collect();
                self.read_node(&node, keys, entry_keys, slots).await
            }
        });
        let mut found: Vec<Result<Option<Arc<Entry>>, TierError>> = vec![Ok(None); keys.len()];
        for answers in futures_util::future::join_all(rounds).await {
            for (i, answer) in answers {
                found[i] = answer;
            }
        }
        found
    }

    async fn put(&self, key: &str, entry: Arc<Entry>) -> Result<bool, TierError> {
        // Within Redis's PX range whatever the entry's times (they are clamped already).
        let keep_ms = entry
            .stale_until_ms
            .saturating_sub(now_ms())
            .min(2 * crate::cache::policy::MAX_LIFETIME_MS);
        if keep_ms == 0 {
            return Ok(false);
        }
        let entry_key = self.entry_key(key);
        let cmd = redis::cmd("SET")
            .arg(&entry_key)
            .arg(entry.encode())
            .arg("PX")
            .arg(keep_ms)
            .to_owned();
        let tags = entry.tags();
        let topology = self.client.topology();
        let node = topology.node_for(entry_key.as_bytes()).clone();
        let tag_keys: Vec<String> = tags.iter().map(|t| self.tag_key(t)).collect();
        let together = tag_keys
            .iter()
            .all(|k| Arc::ptr_eq(topology.node_for(k.as_bytes()), &node));
        if !together {
            // A cluster whose slots spread the tag sets: the entry, then its tags in parallel.
            self.client
                .write::<()>(RedisOp::Set, entry_key.as_bytes(), &cmd)
                .await?;
            let indexes = tags.iter().map(|tag| self.index_tag(tag, &entry_key, keep_ms));
            futures_util::future::join_all(indexes).await;
            return Ok(true);
        }
        // One round trip: the entry and every tag set it joins, in one pipeline.
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        for tag_key in &tag_keys {
            pipe.cmd("EVAL")
                .arg(ADD_TO_TAG)
                .arg(1)
                .arg(tag_key)
                .arg(&entry_key)
                .arg(keep_ms);
        }
        if !node.is_up() {
            return Err(TierError::Unavailable);
        }
        let replies: Vec<redis::Value> = self.client.write_pipe(&node, &pipe).await?;
        for (tag_key, size) in tag_keys.into_iter().zip(replies.iter().skip(1)) {
            if as_int(size).is_some_and(|n| n > TAG_INDEX_TRIM_FROM) {
                // Off the write's path: drop two members whose entries are gone.
                let (tier, entry_key) = (self.clone(), entry_key.clone());
                tokio::spawn(async move { tier.trim_tag(&tag_key, &entry_key).await });
            }
        }
        Ok(true)
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        // A cluster: the tag's set is read in chunks (SSCAN) and each chunk's entries purged by
        // a script per hash slot (by its SHA, loaded once per node), a pipeline per node under
        // a deadline of its own: a tag of any size finishes, and no command waits long behind
        // one. A purge cut short leaves the rest to a retry (a purged entry's script answers 0
        // at once). One server: see `purge_tag_on_one_server`.
        let tag_key = self.tag_key(tag);
        let tag_json = serde_json::to_string(tag).expect("a str always serialises");
        let mode_arg = match mode {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        };
        if !self.client.is_cluster() {
            return self
                .purge_tag_on_one_server(&tag_key, &tag_json, mode_arg, now_ms)
                .await;
        }
        let mut shas: HashMap<String, String> = HashMap::new();
        let mut cursor: u64 = 0;
        let mut purged = 0;
        loop {
            let scan = redis::cmd("SSCAN")
                .arg(&tag_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(TAG_PURGE_CHUNK)
                .to_owned();
            let (next, members): (u64, Vec<String>) =
                self.client.run(RedisOp::Get, tag_key.as_bytes(), &scan).await?;
            let topology = self.client.topology();
            // node -> (node, slot -> members)
            type Groups<'m> = HashMap<u16, Vec<&'m String>>;
            let mut by_node: HashMap<&str, (Arc<Node>, Groups)> = HashMap::new();
            for member in &members {
                let node = topology.node_for(member.as_bytes());
                let slot = key_slot(member.as_bytes());
                by_node
                    .entry(node.addr.as_str())
                    .or_insert_with(|| (node.clone(), HashMap::new()))
                    .1
                    .entry(slot)
                    .or_default()
                    .push(member);
            }
            for (addr, (node, _)) in &by_node {
                if !shas.contains_key(*addr) {
                    let load = redis::cmd("SCRIPT").arg("LOAD").arg(PURGE_IF_TAGGED).to_owned();
                    let sha: String = self.client.run_on(RedisOp::Del, node, &load).await?;
                    shas.insert((*addr).to_owned(), sha);
                }
            }
            let chunks = by_node.into_iter().map(|(addr, (node, groups))| {
                let sha = shas[addr].clone();
                let tag_json = tag_json.as_str();
                async move {
                    let groups: Vec<Vec<&String>> = groups.into_values().collect();
                    let mut pipe = redis::pipe();
                    let mut keys = 0;
                    for group in &groups {
                        keys += group.len();
                        pipe.cmd("EVALSHA")
                            .arg(&sha)
                            .arg(group.len())
                            .arg(group)
                            .arg(tag_json)
                            .arg(mode_arg)
                            .arg(now_ms)
                            .arg(TAG_PURGE_HEAD_BYTES)
                            .arg("0");
                    }
                    // A script reads each entry's head and maybe rewrites it: allow for them.
                    let deadline = self.client.response_timeout() + Duration::from_millis(keys as u64 / 4);
                    let done: Vec<Vec<i64>> = self
                        .client
                        .run_pipe_within(RedisOp::Del, &node, &pipe, deadline)
                        .await?;
                    let purged = done.iter().flatten().filter(|n| **n == 1).count();
                    // The members to take out of the tag's set afterwards (it lives in another
                    // slot than they do).
                    let hit: Vec<String> = groups
                        .iter()
                        .zip(&done)
                        .flat_map(|(group, done)| group.iter().zip(done))
                        .filter(|(_, n)| **n == 1)
                        .map(|(k, _)| (*k).clone())
                        .collect();
                    Ok::<_, TierError>((node, purged, hit))
                }
            });
            let mut gone = Vec::new();
            for done in futures_util::future::join_all(chunks).await {
                let (node, count, hit) = done?;
                purged += count as u64;
                gone.push((node, hit));
            }
            if mode == PurgeMode::Hard {
                self.forget_members(&tag_key, gone).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(purged)
    }

    async fn purge(&self, key: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        let entry_key = self.entry_key(key);
        let mode_arg = match mode {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        };
        let script = redis::cmd("EVAL")
            .arg(PURGE_KEY)
            .arg(1)
            .arg(&entry_key)
            .arg(mode_arg)
            .arg(now_ms)
            .to_owned();
        let n: i64 = self
            .client
            .run(RedisOp::Del, entry_key.as_bytes(), &script)
            .await?;
        Ok(u64::from(n == 1))
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        let entry_key = self.entry_key(key);
        let cmd = redis::cmd("DEL").arg(&entry_key).to_owned();
        self.client
            .run::<i64>(RedisOp::Del, entry_key.as_bytes(), &cmd)
            .await
            .map(drop)
            .map_err(TierError::from)
    }
}

impl RedisTier {
    /// A tag purge on one server: steps of `TAG_PURGE_CHUNK` members, each one script that reads
    /// them from the tag's set and purges them (`PURGE_IF_TAGGED`'s form `2`), one round trip a
    /// step under a deadline of its own. Cut short, it leaves the rest to a retry.
    async fn purge_tag_on_one_server(
        &self,
        tag_key: &str,
        tag_json: &str,
        mode_arg: &str,
        now_ms: u64,
    ) -> Result<u64, TierError> {
        let node = self.client.node_up_for(tag_key.as_bytes())?;
        let load = redis::cmd("SCRIPT").arg("LOAD").arg(PURGE_IF_TAGGED).to_owned();
        let sha: String = self.client.run_on(RedisOp::Del, &node, &load).await?;
        // A script reads each entry's head and maybe rewrites it: allow for them.
        let deadline = self.client.response_timeout() + Duration::from_millis(TAG_PURGE_CHUNK as u64 / 4);
        let mut cursor = String::from("0");
        let mut purged = 0;
        loop {
            let mut step = redis::cmd("EVALSHA");
            step.arg(&sha)
                .arg(1)
                .arg(tag_key)
                .arg(tag_json)
                .arg(mode_arg)
                .arg(now_ms)
                .arg(TAG_PURGE_HEAD_BYTES)
                .arg("2")
                .arg(&cursor)
                .arg(TAG_PURGE_CHUNK);
            let (next, n): (String, u64) = self
                .client
                .run_on_within(RedisOp::Del, &node, &step, deadline)
                .await?;
            purged += n;
            if next == "0" {
                return Ok(purged);
            }
            cursor = next;
        }
    }
}
