//! Counters in Redis, so a limit holds across every gateway process.
//!
//! The same sliding window as [`crate::limits::MemoryCounters`] (60 sub-buckets per window, kept
//! as the fields of one Redis hash per counter), checked and reserved for all the limits of a
//! decision in one Lua script, so two gateways can never both take the last unit. The script
//! reads the clock of the Redis server, so gateways with skewed clocks still agree.

use redis::aio::ConnectionManager;
use redis::{RedisError, Script};

use crate::limits::{LimitKey, Outcome, Reservation, Taken};

const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
-- Limits with the same key share one count: a call adds the largest increment asked of it once.
local wanted = {}
for i = 1, n do
  local inc = tonumber(ARGV[3 * i])
  wanted[KEYS[i]] = math.max(wanted[KEYS[i]] or 0, inc)
end
local slots = {}
for i = 1, n do
  local max = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  local slot_ms = math.max(math.floor(window / 60), 1)
  local slot = math.floor(now / slot_ms)
  slots[i] = slot
  local k = KEYS[i]
  local data = redis.call('HGETALL', k)
  local total = 0
  local live = {}
  for j = 1, #data, 2 do
    local s = tonumber(data[j])
    local a = tonumber(data[j + 1])
    if s + 60 <= slot then
      redis.call('HDEL', k, data[j])
    else
      total = total + a
      table.insert(live, {s, a})
    end
  end
  if total + wanted[k] > max then
    local retry = window
    if wanted[k] <= max then
      table.sort(live, function(x, y) return x[1] < y[1] end)
      local freed = 0
      for _, e in ipairs(live) do
        freed = freed + e[2]
        if total - freed + wanted[k] <= max then
          retry = (e[1] + 60) * slot_ms - now
          break
        end
      end
    end
    return {i - 1, retry}
  end
end
local out = {-1, 0}
local done = {}
for i = 1, n do
  local k = KEYS[i]
  if not done[k] and wanted[k] > 0 then
    redis.call('HINCRBY', k, string.format('%d', slots[i]), wanted[k])
    redis.call('PEXPIRE', k, tonumber(ARGV[3 * i - 1]) * 2)
  end
  done[k] = true
  table.insert(out, slots[i])
end
return out
"#;

const RELEASE: &str = r#"
for i = 1, #KEYS do
  local field = ARGV[2 * i - 1]
  local left = redis.call('HINCRBY', KEYS[i], field, -tonumber(ARGV[2 * i]))
  if left <= 0 then redis.call('HDEL', KEYS[i], field) end
end
return 0
"#;

/// Counters in one Redis (or a Redis-compatible server).
#[derive(Clone)]
pub struct RedisCounters {
    conn: ConnectionManager,
    reserve: Script,
    release: Script,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisCounters")
    }
}

fn redis_key(key: &str) -> String {
    format!("portcullis:limit:{key}")
}

impl RedisCounters {
    /// Connects (and reconnects by itself later).
    pub async fn connect(url: &str) -> Result<RedisCounters, RedisError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(RedisCounters {
            conn,
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
        })
    }

    pub async fn reserve(&self, limits: &[LimitKey]) -> Result<Outcome, RedisError> {
        let mut invocation = self.reserve.prepare_invoke();
        for limit in limits {
            invocation
                .key(redis_key(&limit.key))
                .arg(limit.max)
                .arg(u64::try_from(limit.window.as_millis()).unwrap_or(u64::MAX))
                .arg(limit.increment);
        }
        let mut conn = self.conn.clone();
        let answer: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        match answer.as_slice() {
            [index, retry_ms] if *index >= 0 => Ok(Outcome::Exhausted {
                index: *index as usize,
                retry_after: std::time::Duration::from_millis((*retry_ms).max(1000) as u64),
            }),
            [-1, _, slots @ ..] => {
                // One entry per distinct key, with the largest increment asked of it (as the
                // script took it).
                let mut taken: Vec<Taken> = Vec::new();
                for (limit, slot) in limits.iter().zip(slots) {
                    match taken.iter_mut().find(|t| t.key == limit.key) {
                        Some(t) => t.amount = t.amount.max(limit.increment),
                        None => taken.push(Taken {
                            key: limit.key.clone(),
                            slot: *slot as u64,
                            amount: limit.increment,
                        }),
                    }
                }
                taken.retain(|t| t.amount > 0);
                Ok(Outcome::Reserved(Reservation::remote(taken)))
            }
            other => Err(RedisError::from((
                redis::ErrorKind::Client,
                "unexpected answer from the limit script",
                format!("{other:?}"),
            ))),
        }
    }

    pub async fn release(&self, taken: &[Taken]) -> Result<(), RedisError> {
        if taken.is_empty() {
            return Ok(());
        }
        let mut invocation = self.release.prepare_invoke();
        for t in taken {
            invocation
                .key(redis_key(&t.key))
                .arg(t.slot.to_string())
                .arg(t.amount);
        }
        let mut conn = self.conn.clone();
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }
}
