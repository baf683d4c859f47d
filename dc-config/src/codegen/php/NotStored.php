/**
 * Events could not be stored before the client's timeout (the collector
 * refused them, was unreachable, or closed the connection): send them again.
 */
final class NotStored extends \RuntimeException
{
}
