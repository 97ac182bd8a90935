<?php

declare(strict_types=1);

/*
 * A minimal Laravel 8 application (Debian's php-laravel-framework, no Composer) to test the
 * Conveyor queue connector: config/ and app/ beside this file; caches go to CONVEYOR_LARAVEL_CACHE.
 */

require_once 'Illuminate/autoload.php';
require_once __DIR__ . '/../../../clients/php/src/autoload.php';

spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'App\\')) {
        $file = __DIR__ . '/app/' . str_replace('\\', '/', substr($class, 4)) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});

$cache = getenv('CONVEYOR_LARAVEL_CACHE') ?: sys_get_temp_dir() . '/conveyor-laravel-' . getmypid();
@mkdir($cache, 0777, true);
foreach (['APP_PACKAGES_CACHE' => 'packages.php', 'APP_SERVICES_CACHE' => 'services.php',
          'APP_CONFIG_CACHE' => 'config.php', 'APP_ROUTES_CACHE' => 'routes.php', 'APP_EVENTS_CACHE' => 'events.php'] as $name => $file) {
    $_ENV[$name] = $_SERVER[$name] = "{$cache}/{$file}";
    putenv("{$name}={$cache}/{$file}");
}

$app = new Illuminate\Foundation\Application(__DIR__);
$app->useStoragePath($cache);
$app->singleton(Illuminate\Contracts\Console\Kernel::class, Illuminate\Foundation\Console\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, Illuminate\Foundation\Exceptions\Handler::class);
return $app;
