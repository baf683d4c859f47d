//! The keys of keyed states, in both places a state lives: Redis (the
//! latest value, [`redis_key`]) and ClickHouse's keyed-state table (what a
//! Redis miss reads, [`table_key`]; docs/adr/0005-keyed-state-table-for-redis-misses.md).
//! Both are built from the key fields' values as canonical column text, in
//! the state's key order. A ground-floor module: it imports nothing.

/// Prefix of every Redis key Spoolhouse writes.
pub const REDIS_PREFIX: &str = "sh";

/// Separates the key fields' values in the keyed-state table's `key`
/// column: a control character no value may hold (validation refuses it in
/// strings, enum values and progress keys), so keys cannot collide.
pub const TABLE_SEPARATOR: char = '\u{1f}';

/// The Redis key of the state of `event` for the given key field values,
/// e.g. `sh:watch_progress:{7}:42`. The first key value sits in a hash tag,
/// so in Redis Cluster every state of one user (or whatever leads the key)
/// shares a slot; `:` inside values is escaped so keys cannot collide.
pub fn redis_key<S: AsRef<str>>(event: &str, key_values: &[S]) -> String {
    let mut k = format!("{REDIS_PREFIX}:{event}");
    for (i, v) in key_values.iter().enumerate() {
        let v = v.as_ref().replace('\\', "\\\\").replace(':', "\\:");
        if i == 0 {
            k.push_str(&format!(":{{{v}}}"));
        } else {
            k.push(':');
            k.push_str(&v);
        }
    }
    k
}

/// The keyed-state table's `key` column for the key fields' values: what
/// its materialized views write, and what a Redis miss looks up.
pub fn table_key<S: AsRef<str>>(key_values: &[S]) -> String {
    key_values
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(&TABLE_SEPARATOR.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_keys_are_tagged_and_escaped() {
        assert_eq!(
            redis_key("watch_progress", &["7", "42"]),
            "sh:watch_progress:{7}:42"
        );
        assert_eq!(redis_key("e", &["a:b", "c\\"]), "sh:e:{a\\:b}:c\\\\");
        assert_ne!(redis_key("e", &["a:b", "c"]), redis_key("e", &["a", "b:c"]));
    }

    #[test]
    fn table_keys_join_with_the_unit_separator() {
        assert_eq!(table_key(&["7", "42"]), "7\u{1f}42");
    }
}
