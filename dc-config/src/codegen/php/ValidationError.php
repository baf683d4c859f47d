/**
 * An event breaks a registry rule: the collector would reject it with the
 * same field, rule code and message.
 */
final class ValidationError extends \InvalidArgumentException
{
    public function __construct(public readonly string $field, public readonly string $rule, string $message)
    {
        parent::__construct($field === '' ? $message : "`$field` $message");
    }
}
