# Ruby peers for tests/peers/peers.rs (Debian's ruby-activerecord 6.1 and ruby-pg):
#
#   ruby peer.rb rails-migrate <database url> <block key>
#       Rails' migrator (ActiveRecord::MigrationContext#migrate) runs one migration that waits on
#       pg_advisory_lock(<block key>) (so the test can see Rails holding its migration lock);
#       prints "migrated", or "concurrent" if Rails raised ConcurrentMigrationError.
#   ruby peer.rb wal-keys
#       The with_advisory_lock gem's key derivation in real Ruby (the gem itself is on neither
#       Debian nor any registry this project reaches): reads a JSON array of [name, prefix-or-null]
#       from stdin, prints a JSON array of [key1, key2].
require "json"
require "zlib"
require "tmpdir"

mode = ARGV.fetch(0)
case mode
when "rails-migrate"
  require "active_record"
  url, block_key = ARGV.fetch(1), Integer(ARGV.fetch(2))
  Dir.mktmpdir do |dir|
    File.write(File.join(dir, "20260101000001_wait_for_the_test.rb"), <<~RUBY)
      class WaitForTheTest < ActiveRecord::Migration[6.1]
        def up
          execute "SELECT pg_advisory_lock(#{block_key})"
          execute "SELECT pg_advisory_unlock(#{block_key})"
          create_table :rails_widgets
        end
      end
    RUBY
    ActiveRecord::Migration.verbose = false
    ActiveRecord::Base.establish_connection(url)
    context = ActiveRecord::MigrationContext.new([dir], ActiveRecord::SchemaMigration)
    begin
      context.migrate
      puts "migrated"
    rescue ActiveRecord::ConcurrentMigrationError
      puts "concurrent"
    end
  end
when "wal-keys"
  # The with_advisory_lock gem's derivation (stable_hashcode in lib/with_advisory_lock/
  # core_advisory.rb, lock_keys_for in postgresql_advisory.rb), written out here with the same
  # Ruby operations it uses: Zlib.crc32 of the name, the WITH_ADVISORY_LOCK_PREFIX value read with
  # String#to_i (nil when unset), each masked with & 0x7fffffff on Ruby's unbounded integers.
  out = JSON.parse($stdin.read).map do |name, prefix|
    [Zlib.crc32(name) & 0x7fffffff, prefix.to_i & 0x7fffffff]
  end
  puts JSON.generate(out)
else
  abort "unknown mode #{mode}"
end
