<?php
// Run by tests/codegen.rs with the generated package's folder as argv[1]
// and SPOOLHOUSE_SOCKET / SPOOLHOUSE_INBOX set: every event type of the
// example registry through the socket and through an inbox file, then
// invalid values refused on the client with the collector's own field,
// rule and message (the same raw line sent to the collector beside it).

declare(strict_types=1);

require $argv[1] . '/autoload.php';

use Spoolhouse\Events\{Client, Registration, ScreenView, ValidationError, Vote, WatchProgress};

function every(int $base): array
{
    return [
        new Registration(userId: $base + 1, gender: Registration::GENDER_FEMALE, countryId: 7, platform: Registration::PLATFORM_IOS),
        new WatchProgress(userId: $base + 2, videoId: 99, videoTime: 1234),
        new Vote(userId: $base + 3, targetUserId: 5, vote: Vote::VOTE_YES, countryId: 250),
        new ScreenView(userId: $base + 4, screen: "home \u{e9}", platform: ScreenView::PLATFORM_WEB, loadMs: 42, isFirstLaunch: true),
    ];
}

function raw(string $line): array
{
    $c = stream_socket_client('unix://' . getenv('SPOOLHOUSE_SOCKET'));
    fwrite($c, $line . "\n");
    stream_socket_shutdown($c, STREAM_SHUT_WR);
    $a = json_decode(fgets($c), true);
    fclose($c);
    return $a;
}

$sock = new Client(socketPath: getenv('SPOOLHOUSE_SOCKET'));
echo 'socket stored ', $sock->send(...every(5000)), "\n";
$inbox = new Client(inboxDir: getenv('SPOOLHOUSE_INBOX'), inboxName: 'typed-php.log');
echo 'inbox stored ', $inbox->send(...every(6000)), "\n";

$now = (int) floor(microtime(true) * 1000);
$x65 = str_repeat('x', 65);
$cases = [
    [fn () => new Vote(userId: 1, targetUserId: 2, vote: 'maybe', countryId: 7),
        "{\"event\":\"vote\",\"time\":$now,\"attrs\":{\"user_id\":1,\"target_user_id\":2,\"vote\":\"maybe\",\"country_id\":7}}"],
    [fn () => new Vote(userId: 1, targetUserId: 2, vote: 'yes', countryId: 70000),
        "{\"event\":\"vote\",\"time\":$now,\"attrs\":{\"user_id\":1,\"target_user_id\":2,\"vote\":\"yes\",\"country_id\":70000}}"],
    [fn () => new Vote(userId: -1, targetUserId: 2, vote: 'yes', countryId: 7),
        "{\"event\":\"vote\",\"time\":$now,\"attrs\":{\"user_id\":-1,\"target_user_id\":2,\"vote\":\"yes\",\"country_id\":7}}"],
    [fn () => new ScreenView(userId: 1, screen: $x65, platform: 'web', loadMs: 1),
        "{\"event\":\"screen_view\",\"time\":$now,\"attrs\":{\"user_id\":1,\"screen\":\"$x65\",\"platform\":\"web\",\"load_ms\":1}}"],
    [fn () => new WatchProgress(userId: 1, videoId: 2, videoTime: 3, timeMs: 17000000000),
        '{"event":"watch_progress","time":17000000000,"attrs":{"user_id":1,"video_id":2,"video_time":3}}'],
];
foreach ($cases as [$make, $line]) {
    try {
        $make();
        echo "not refused on the client: $line\n";
        exit(1);
    } catch (ValidationError $e) {
        $got = raw($line);
        if ([$got['field'], $got['rule'], $got['error']] !== [$e->field, $e->rule, 'line 1: ' . $e->getMessage()]) {
            echo "client: {$e->field} {$e->rule} {$e->getMessage()}\ncollector: " . json_encode($got) . "\n";
            exit(1);
        }
    }
}
echo 'client errors equal the collector\'s: ', count($cases), "\n";
echo "ok\n";
