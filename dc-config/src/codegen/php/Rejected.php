/** The collector rejected lines (the others were stored). */
final class Rejected extends \RuntimeException
{
    /** @param list<array<string, mixed>> $rejections the collector's answers */
    public function __construct(public readonly array $rejections)
    {
        parent::__construct(implode('; ', array_map(static fn ($r) => (string) ($r['error'] ?? ''), $rejections)));
    }
}
