/**
 * Base of the generated event types: the collector's rules, with its
 * messages (docs/protocol.md).
 */
abstract class Event
{
    public const MIN_TIME_MS = @MIN_TIME_MS@;
    public const MAX_TIME_MS = @MAX_TIME_MS@;

    /** @param array<string, mixed> $attrs */
    protected function __construct(public readonly int $timeMs, private readonly array $attrs)
    {
    }

    /** The event as one line of the collector's protocol. */
    public function toLine(): string
    {
        $attrs = array_filter($this->attrs, static fn ($v) => $v !== null);
        return json_encode(
            ['event' => static::EVENT, 'time' => $this->timeMs, 'attrs' => (object) $attrs],
            JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION | JSON_THROW_ON_ERROR
        ) . "\n";
    }

    protected static function checkInt(string $field, int $v, int $lo, int $hi, string $loText, string $hiText): int
    {
        if ($v < $lo || $v > $hi) {
            throw new ValidationError("attrs.$field", 'out_of_range', "must be from $loText to $hiText");
        }
        return $v;
    }

    protected static function checkFloat(string $field, float $v): float
    {
        if (!is_finite($v)) {
            throw new ValidationError("attrs.$field", 'wrong_type', 'must be a number');
        }
        return $v;
    }

    protected static function checkString(string $field, string $v, int $maxLen): string
    {
        if (strlen($v) > $maxLen) {
            throw new ValidationError("attrs.$field", 'too_long', "is longer than its max_len of $maxLen bytes");
        }
        if (str_contains($v, "\x1f")) {
            throw new ValidationError(
                "attrs.$field",
                'key_separator',
                'may not contain U+001F (the unit separator, which joins key fields in the keyed-state table)'
            );
        }
        return $v;
    }

    /** @param list<string> $allowed */
    protected static function checkEnum(string $field, string $v, array $allowed): string
    {
        if (!in_array($v, $allowed, true)) {
            throw new ValidationError("attrs.$field", 'not_in_enum', 'must be one of: ' . implode(', ', $allowed));
        }
        return $v;
    }

    protected static function checkTime(?int $t, int $pastS, int $futureS): int
    {
        $now = (int) floor(microtime(true) * 1000);
        if ($t === null) {
            return $now;
        }
        if ($t < self::MIN_TIME_MS || $t > self::MAX_TIME_MS) {
            throw new ValidationError(
                'time',
                'time_out_of_range',
                'must be milliseconds since the Unix epoch, from ' . self::MIN_TIME_MS . ' (2000-01-01) to '
                . self::MAX_TIME_MS . ' (2105-12-31); a value near 1.7e9 is seconds, multiply by 1000'
            );
        }
        if ($t < $now - $pastS * 1000) {
            throw new ValidationError(
                'time',
                'time_too_old',
                "is more than $pastS s before the collector's clock (the event type's accept_past_s); to load older history on purpose, raise the collector's limits.history_s"
            );
        }
        if ($t > $now + $futureS * 1000) {
            throw new ValidationError(
                'time',
                'time_too_new',
                "is more than $futureS s after the collector's clock (the event type's accept_future_s); is the sender's clock right?"
            );
        }
        return $t;
    }
}
