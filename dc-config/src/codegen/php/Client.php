/**
 * Sends events to the collector on this host: over its Unix socket
 * (pipelined; send() returns once every event is acknowledged, i.e. durable
 * in the spool; refused lines are sent again with backoff until the
 * timeout), or by appending to a file in its inbox (no network call at
 * all). Without arguments, SPOOLHOUSE_SOCKET or SPOOLHOUSE_INBOX chooses.
 */
final class Client
{
    /** @var resource|null */
    private $conn = null;
    private int $lines = 0;

    public function __construct(
        private ?string $socketPath = null,
        private ?string $inboxDir = null,
        private ?string $inboxName = null,
        private float $timeoutS = 30.0,
    ) {
        if ($this->socketPath === null && $this->inboxDir === null) {
            $this->socketPath = getenv('SPOOLHOUSE_SOCKET') ?: null;
            $this->inboxDir = getenv('SPOOLHOUSE_INBOX') ?: null;
        }
        if ($this->socketPath === null && $this->inboxDir === null) {
            throw new \InvalidArgumentException(
                'no collector to send to: pass socketPath or inboxDir, or set SPOOLHOUSE_SOCKET or SPOOLHOUSE_INBOX'
            );
        }
    }

    /** Sends the events; returns how many were stored. */
    public function send(Event ...$events): int
    {
        $lines = array_map(static fn (Event $e) => $e->toLine(), $events);
        if ($lines === []) {
            return 0;
        }
        if ($this->socketPath === null) {
            $path = $this->inboxDir . '/' . ($this->inboxName ?? 'events-' . getmypid() . '.log');
            foreach ($lines as $line) {
                // One write per line: lines of several writers never interleave.
                if (file_put_contents($path, $line, FILE_APPEND) === false) {
                    throw new \RuntimeException("cannot append to $path");
                }
            }
            return count($lines);
        }
        return $this->sendSocket($lines);
    }

    public function close(): void
    {
        if ($this->conn !== null) {
            fclose($this->conn);
            $this->conn = null;
        }
    }

    /** @param list<string> $lines */
    private function sendSocket(array $lines): int
    {
        $deadline = microtime(true) + $this->timeoutS;
        $pending = $lines;
        $rejected = [];
        $stored = 0;
        for ($attempt = 0; $pending !== []; $attempt++) {
            if (microtime(true) > $deadline) {
                throw new NotStored(count($pending) . " event(s) not stored within {$this->timeoutS} s");
            }
            if ($attempt > 0) {
                $delay = min(0.05 * (2 ** min($attempt, 6)), 2.0) * (0.75 + mt_rand() / mt_getrandmax() / 2);
                usleep((int) (1e6 * max(0.0, min($delay, $deadline - microtime(true)))));
            }
            $retry = [];
            $settled = 0;
            try {
                if ($this->conn === null) {
                    $conn = @stream_socket_client('unix://' . $this->socketPath, $errno, $errstr, $this->timeoutS);
                    if ($conn === false) {
                        throw new \RuntimeException("connect: $errstr");
                    }
                    stream_set_timeout($conn, (int) ceil($this->timeoutS));
                    $this->conn = $conn;
                    $this->lines = 0;
                }
                // The collector numbers lines from 1 per connection.
                $base = $this->lines;
                $all = implode('', $pending);
                for ($off = 0; $off < strlen($all);) {
                    $n = fwrite($this->conn, substr($all, $off));
                    if ($n === false || $n === 0) {
                        throw new \RuntimeException('write failed');
                    }
                    $off += $n;
                }
                $this->lines += count($pending);
                while ($settled < count($pending)) {
                    $text = fgets($this->conn);
                    if ($text === false) {
                        throw new \RuntimeException('the collector closed the connection');
                    }
                    $a = json_decode($text, true, 8, JSON_THROW_ON_ERROR);
                    if (isset($a['rule'])) {
                        $a['line_sent'] = $pending[$a['line'] - $base - 1] ?? '';
                        $rejected[] = $a;
                    } elseif (isset($a['ack'])) {
                        $stored += (int) ($a['accepted'] ?? 0);
                        $settled = $a['ack'] - $base;
                    } elseif (isset($a['refused'])) {
                        array_push($retry, ...array_slice($pending, $a['from'] - $base - 1, $a['through'] - $a['from'] + 1));
                        $settled = $a['through'] - $base;
                    } elseif (isset($a['closing'])) {
                        throw new \RuntimeException($a['closing']);
                    }
                }
            } catch (\RuntimeException | \JsonException $e) {
                // Lines after the last ack or refusal were not stored: again,
                // on a new connection.
                array_push($retry, ...array_slice($pending, $settled));
                $this->close();
            }
            $pending = $retry;
        }
        if ($rejected !== []) {
            throw new Rejected($rejected);
        }
        return $stored;
    }
}
